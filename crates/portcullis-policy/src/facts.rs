//! The facts a decision reads: who (principal), what (action, resource),
//! the call's arguments, the session, risk and time. The gateway fills
//! these from its own state; nothing here knows MCP transports.

use serde::Deserialize;

/// How the caller proved who it is, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Default)]
pub enum Strength {
    /// Nothing (only with `--allow-anonymous-loopback`).
    #[default]
    #[serde(rename = "anonymous")]
    Anonymous,
    /// The local user of a stdio front (`wrap`).
    #[serde(rename = "local")]
    Local,
    /// A valid bearer token.
    #[serde(rename = "token")]
    Token,
    /// A verified client certificate.
    #[serde(rename = "certificate")]
    Certificate,
    /// Both a certificate and a token.
    #[serde(rename = "certificate+token")]
    CertificateAndToken,
}

impl Strength {
    /// The name policies see in `context.strength`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strength::Anonymous => "anonymous",
            Strength::Local => "local",
            Strength::Token => "token",
            Strength::Certificate => "certificate",
            Strength::CertificateAndToken => "certificate+token",
        }
    }

    /// The rank policies see in `context.strength_level` (0 anonymous … 4 certificate+token).
    pub fn level(self) -> i64 {
        match self {
            Strength::Anonymous => 0,
            Strength::Local => 1,
            Strength::Token => 2,
            Strength::Certificate => 3,
            Strength::CertificateAndToken => 4,
        }
    }

    /// Parses a strength name (`anonymous`, `local`, `token`, `certificate`, `certificate+token`).
    pub fn parse(s: &str) -> Option<Strength> {
        Some(match s {
            "anonymous" => Strength::Anonymous,
            "local" => Strength::Local,
            "token" => Strength::Token,
            "certificate" => Strength::Certificate,
            "certificate+token" => Strength::CertificateAndToken,
            _ => return None,
        })
    }
}

/// Which kind of principal the request comes from (one Cedar entity type each).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A workload with a verified client certificate (`Portcullis::Agent`, id = SPIFFE ID).
    Agent {
        /// The SPIFFE ID, e.g. `spiffe://example.org/agent/a`.
        spiffe_id: String,
        /// The trust domain (derived from `spiffe_id` when empty).
        #[serde(default)]
        trust_domain: String,
    },
    /// A user or OAuth client from a bearer token (`Portcullis::User`, id = `iss#sub`).
    User {
        /// The token issuer.
        iss: String,
        /// The subject (or the client id when the token names no subject).
        sub: String,
        /// Granted scopes.
        #[serde(default)]
        scopes: Vec<String>,
    },
    /// The local user behind `wrap` (`Portcullis::LocalUser`, id = `name`).
    Local {
        /// `user@agent`.
        name: String,
    },
    /// Nobody (`Portcullis::Anonymous::"anonymous"`).
    Anonymous,
}

/// Token claims of the user behind a request (`context.user`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct UserClaims {
    /// `iss`.
    pub iss: String,
    /// `sub` (or the client id).
    pub sub: String,
    /// `client_id` / `azp`, if any.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Granted scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Verified device posture (`context.device`); `None` on the principal means unknown.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct DeviceFacts {
    /// The device id (`sub` of the posture assertion).
    pub id: String,
    /// The device is managed.
    #[serde(default)]
    pub managed: bool,
    /// Operating system.
    #[serde(default)]
    pub os: Option<String>,
    /// Days since the last OS patch.
    #[serde(default)]
    pub patch_age_days: Option<u32>,
    /// Disk encryption is on.
    #[serde(default)]
    pub disk_encrypted: Option<bool>,
    /// An EDR agent is running.
    #[serde(default)]
    pub edr_running: Option<bool>,
}

/// Who is calling: the principal entity plus the facts that travel in the context.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PrincipalFacts {
    /// The principal entity.
    #[serde(flatten)]
    pub kind: PrincipalKind,
    /// Token claims (also for an agent that presented a token); a `User`
    /// principal without them gets its own `iss`/`sub`/`scopes` here.
    #[serde(default)]
    pub user: Option<UserClaims>,
    /// Verified device posture, if any.
    #[serde(default)]
    pub device: Option<DeviceFacts>,
    /// How strongly it was authenticated.
    #[serde(default)]
    pub strength: Strength,
    /// Segments the principal belongs to (its entity's parents).
    #[serde(default)]
    pub segments: Vec<String>,
}

impl PrincipalFacts {
    /// The anonymous local developer (`--allow-anonymous-loopback`).
    pub fn anonymous() -> PrincipalFacts {
        PrincipalFacts {
            kind: PrincipalKind::Anonymous,
            user: None,
            device: None,
            strength: Strength::Anonymous,
            segments: Vec::new(),
        }
    }
}

/// What a request is about: one Cedar entity type each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// `Portcullis::Tool`.
    Tool,
    /// `Portcullis::Resource`.
    Resource,
    /// `Portcullis::Prompt`.
    Prompt,
    /// `Portcullis::Server`.
    Server,
}

/// MCP annotation hints as the server declared them (`None` = not declared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub struct Annotations {
    /// `readOnlyHint`.
    #[serde(default)]
    pub read_only: Option<bool>,
    /// `destructiveHint`.
    #[serde(default)]
    pub destructive: Option<bool>,
    /// `idempotentHint`.
    #[serde(default)]
    pub idempotent: Option<bool>,
    /// `openWorldHint`.
    #[serde(default)]
    pub open_world: Option<bool>,
}

/// The request's target: a tool, resource, prompt or server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ResourceFacts {
    /// Entity type.
    #[serde(rename = "type")]
    pub kind: ResourceKind,
    /// The client-facing name (tool/prompt), URI (resource) or server name.
    pub id: String,
    /// The upstream server that owns it (for a server: its own name).
    #[serde(default)]
    pub server: String,
    /// Segments it belongs to (its entity's parents, besides its server).
    #[serde(default)]
    pub segments: Vec<String>,
    /// Labels from config (`confidential`, `egress`, `write`, …).
    #[serde(default)]
    pub labels: Vec<String>,
    /// Annotation hints.
    #[serde(default)]
    pub annotations: Annotations,
}

impl ResourceFacts {
    /// A server as the resource (lists, ping, server→client requests).
    pub fn server(name: &str) -> ResourceFacts {
        ResourceFacts {
            kind: ResourceKind::Server,
            id: name.to_owned(),
            server: name.to_owned(),
            segments: Vec::new(),
            labels: Vec::new(),
            annotations: Annotations::default(),
        }
    }

    /// A tool of `server`, by its client-facing name.
    pub fn tool(server: &str, name: &str) -> ResourceFacts {
        ResourceFacts {
            kind: ResourceKind::Tool,
            id: name.to_owned(),
            ..ResourceFacts::server(server)
        }
    }
}

/// Facts the gateway keeps per session (`context.session`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct SessionFacts {
    /// Calls made in the session so far.
    #[serde(default)]
    pub calls: u64,
    /// Labels of everything read in the session so far.
    #[serde(default)]
    pub labels_read: Vec<String>,
    /// The session has read something `confidential`.
    #[serde(default)]
    pub tainted: bool,
}

/// The action: one per MCP method (Cedar `Portcullis::Action::"<as_str()>"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// `tools/call`.
    CallTool,
    /// `tools/list`.
    ListTools,
    /// `resources/read`.
    ReadResource,
    /// `resources/list`.
    ListResources,
    /// `resources/templates/list`.
    ListResourceTemplates,
    /// `resources/subscribe`, `resources/unsubscribe`, `subscriptions/listen`.
    Subscribe,
    /// `prompts/get`.
    GetPrompt,
    /// `prompts/list`.
    ListPrompts,
    /// `completion/complete`.
    Complete,
    /// `logging/setLevel`.
    SetLogLevel,
    /// `ping` (either direction).
    Ping,
    /// `server/discover` and `initialize`.
    Discover,
    /// `elicitation/create` (server → client).
    Elicit,
    /// `sampling/createMessage` (server → client).
    Sample,
    /// `roots/list` (server → client).
    ListRoots,
    /// `notifications/*` (either direction).
    Notify,
    /// Any other method (Cedar action `Other`; the method is `context.method`).
    Other(String),
}

/// Every Cedar action id a request can carry, in schema order.
pub const ACTION_IDS: [&str; 17] = [
    "CallTool",
    "ListTools",
    "ReadResource",
    "ListResources",
    "ListResourceTemplates",
    "Subscribe",
    "GetPrompt",
    "ListPrompts",
    "Complete",
    "SetLogLevel",
    "Ping",
    "Discover",
    "Elicit",
    "Sample",
    "ListRoots",
    "Notify",
    "Other",
];

impl Action {
    /// The Cedar action id (`Other(_)` is `"Other"`).
    pub fn as_str(&self) -> &str {
        match self {
            Action::CallTool => "CallTool",
            Action::ListTools => "ListTools",
            Action::ReadResource => "ReadResource",
            Action::ListResources => "ListResources",
            Action::ListResourceTemplates => "ListResourceTemplates",
            Action::Subscribe => "Subscribe",
            Action::GetPrompt => "GetPrompt",
            Action::ListPrompts => "ListPrompts",
            Action::Complete => "Complete",
            Action::SetLogLevel => "SetLogLevel",
            Action::Ping => "Ping",
            Action::Discover => "Discover",
            Action::Elicit => "Elicit",
            Action::Sample => "Sample",
            Action::ListRoots => "ListRoots",
            Action::Notify => "Notify",
            Action::Other(_) => "Other",
        }
    }

    /// The position of this action in [`ACTION_IDS`].
    pub fn index(&self) -> usize {
        match self {
            Action::CallTool => 0,
            Action::ListTools => 1,
            Action::ReadResource => 2,
            Action::ListResources => 3,
            Action::ListResourceTemplates => 4,
            Action::Subscribe => 5,
            Action::GetPrompt => 6,
            Action::ListPrompts => 7,
            Action::Complete => 8,
            Action::SetLogLevel => 9,
            Action::Ping => 10,
            Action::Discover => 11,
            Action::Elicit => 12,
            Action::Sample => 13,
            Action::ListRoots => 14,
            Action::Notify => 15,
            Action::Other(_) => 16,
        }
    }

    /// The action for an MCP method; `server_to_client` for requests the
    /// server sends (elicitation, sampling, roots, ping, notifications).
    pub fn from_method(method: &str, server_to_client: bool) -> Action {
        if method.starts_with("notifications/") {
            return Action::Notify;
        }
        if method == "ping" {
            return Action::Ping;
        }
        if server_to_client {
            return match method {
                "elicitation/create" => Action::Elicit,
                "sampling/createMessage" => Action::Sample,
                "roots/list" => Action::ListRoots,
                other => Action::Other(other.to_owned()),
            };
        }
        match method {
            "tools/call" => Action::CallTool,
            "tools/list" => Action::ListTools,
            "resources/read" => Action::ReadResource,
            "resources/list" => Action::ListResources,
            "resources/templates/list" => Action::ListResourceTemplates,
            "resources/subscribe" | "resources/unsubscribe" | "subscriptions/listen" => {
                Action::Subscribe
            }
            "prompts/get" => Action::GetPrompt,
            "prompts/list" => Action::ListPrompts,
            "completion/complete" => Action::Complete,
            "logging/setLevel" => Action::SetLogLevel,
            "server/discover" | "initialize" => Action::Discover,
            other => Action::Other(other.to_owned()),
        }
    }

    /// The action for a Cedar action id (`"CallTool"`), else `None`.
    pub fn from_id(id: &str) -> Option<Action> {
        Some(match id {
            "CallTool" => Action::CallTool,
            "ListTools" => Action::ListTools,
            "ReadResource" => Action::ReadResource,
            "ListResources" => Action::ListResources,
            "ListResourceTemplates" => Action::ListResourceTemplates,
            "Subscribe" => Action::Subscribe,
            "GetPrompt" => Action::GetPrompt,
            "ListPrompts" => Action::ListPrompts,
            "Complete" => Action::Complete,
            "SetLogLevel" => Action::SetLogLevel,
            "Ping" => Action::Ping,
            "Discover" => Action::Discover,
            "Elicit" => Action::Elicit,
            "Sample" => Action::Sample,
            "ListRoots" => Action::ListRoots,
            "Notify" => Action::Notify,
            _ => return None,
        })
    }

    /// The MCP method for `context.method` (`Other` keeps its own; a
    /// grouped action names its first method).
    pub fn method(&self) -> &str {
        match self {
            Action::CallTool => "tools/call",
            Action::ListTools => "tools/list",
            Action::ReadResource => "resources/read",
            Action::ListResources => "resources/list",
            Action::ListResourceTemplates => "resources/templates/list",
            Action::Subscribe => "resources/subscribe",
            Action::GetPrompt => "prompts/get",
            Action::ListPrompts => "prompts/list",
            Action::Complete => "completion/complete",
            Action::SetLogLevel => "logging/setLevel",
            Action::Ping => "ping",
            Action::Discover => "server/discover",
            Action::Elicit => "elicitation/create",
            Action::Sample => "sampling/createMessage",
            Action::ListRoots => "roots/list",
            Action::Notify => "notifications/message",
            Action::Other(m) => m,
        }
    }
}

/// One request to decide: borrowed facts, built by the gateway per message.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Who.
    pub principal: &'a PrincipalFacts,
    /// Which MCP method.
    pub action: Action,
    /// On what.
    pub resource: &'a ResourceFacts,
    /// The call's arguments (`params.arguments`), if any.
    pub arguments: Option<&'a serde_json::Value>,
    /// The exact MCP method for `context.method` (else [`Action::method`]).
    pub method: Option<&'a str>,
    /// Session facts.
    pub session: &'a SessionFacts,
    /// The live risk score (0 until monitoring lands).
    pub risk: i64,
    /// What the argument scan found (`context.argument_findings`): each
    /// finding's rule id, plus `RULE:high` for a high-severity one, so
    /// policies can refuse SSRF and traversal shapes by name.
    pub argument_findings: &'a [String],
    /// Now, seconds since the Unix epoch.
    pub now_unix: i64,
}
