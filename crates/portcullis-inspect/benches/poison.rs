//! Cost of poisoning and injection detection: a 100-tool `tools/list`
//! scanned tool by tool (target: ≤ 1 ms for all 100), one small tool, and
//! result text: 64 KiB of ordinary text (target: ≤ 150 µs), 64 KiB of
//! ordinary text full of the words injections are made of (user, system,
//! instructions, the AI, the conversation, addresses), and the small
//! result every call returns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis_inspect::inject::{scan_result, scan_result_text};
use portcullis_inspect::poison::{scan_tool, Context};
use serde_json::{json, Value};

/// Realistic tool shapes: (name, description, parameters as (name, type, description)).
/// A parameter: name, JSON type, description.
type Param = (&'static str, &'static str, &'static str);

const SHAPES: &[(&str, &str, &[Param])] = &[
    ("read_text_file", "Returns the whole text of one file. The bytes are decoded as UTF-8 and invalid sequences are replaced. Give head to get only the first N lines or tail for the last N lines, not both. Paths outside the allowed directories are refused with an error.",
        &[("path", "string", "Path of the file, absolute or relative to an allowed directory."), ("head", "number", "Return only this many lines from the start."), ("tail", "number", "Return only this many lines from the end.")]),
    ("write_file", "Creates a file, or replaces an existing one, with the given text. The old content is overwritten without a backup, so prefer edit_file for small changes. The parent directory must already exist.",
        &[("path", "string", "Where to write."), ("content", "string", "Full text to write into the file.")]),
    ("edit_file", "Applies line-based replacements to a text file and returns a unified diff of what changed. Each edit names a block of existing text and the text to put in its place; differences in indentation are tolerated. Use dryRun to see the diff without saving anything.",
        &[("path", "string", "File to edit."), ("dryRun", "boolean", "Preview the diff without writing the file.")]),
    ("list_directory", "Lists what a directory contains, one entry per line, each marked [FILE] or [DIR]. Handy for finding out what a folder holds before opening particular files.",
        &[("path", "string", "Directory to list.")]),
    ("search_files", "Looks recursively below a starting folder for files and directories whose names match a glob pattern, ignoring case. Returns the full path of every match; useful when you do not know where a file lives.",
        &[("path", "string", "Folder to start in."), ("pattern", "string", "Glob pattern, e.g. *.rs or **/test_*.py."), ("excludePatterns", "array", "Globs of paths to leave out, such as node_modules.")]),
    ("git_status", "Shows the working tree status: current branch, staged and unstaged changes and untracked files.",
        &[("repo_path", "string", "Path to the Git repository on disk.")]),
    ("git_diff", "Shows the differences between the working tree and a target revision, such as another branch or a commit hash like 3f786850e387550fdab836ed7e6dc881de23001b.",
        &[("repo_path", "string", "Path to the repository."), ("target", "string", "Branch, tag or commit to compare with.")]),
    ("git_commit", "Records the staged changes in a new commit with the given message and returns the new commit's hash.",
        &[("repo_path", "string", "Path to the repository."), ("message", "string", "Commit message; the first line is the summary.")]),
    ("fetch", "Retrieves a URL from the internet and returns its content, turning HTML pages into markdown so they are easier to read. With it you can look up current information online even though your training data stops at a cutoff date. Long pages come back in chunks: call it again with start_index set to carry on where the previous chunk ended.",
        &[("url", "string", "The URL to retrieve."), ("max_length", "integer", "Largest number of characters to return."), ("start_index", "integer", "Character offset to start at."), ("raw", "boolean", "Return the page's HTML unchanged.")]),
    ("get_current_time", "Returns the current date and time in an IANA time zone, and whether daylight saving time is in effect there.",
        &[("timezone", "string", "IANA time zone name such as 'Europe/Berlin' or 'America/Chicago'.")]),
    ("create_entities", "Adds entities to the knowledge graph. Every entity has a unique name, an entity type and a list of observations; names that already exist are skipped.",
        &[("entities", "array", "Entities to create.")]),
    ("search_nodes", "Finds entities whose name, type or observations contain the query text, ignoring case.",
        &[("query", "string", "Text to look for.")]),
    ("read_query", "Runs a SELECT statement against the SQLite database and returns the rows as JSON. Only read-only statements are accepted; use write_query for changes.",
        &[("query", "string", "The SELECT statement to run.")]),
    ("describe_table", "Returns the columns of a table with their types, default values and whether they accept NULL.",
        &[("table_name", "string", "Name of the table.")]),
    ("create_issue", "Opens an issue in a GitHub repository. Only the title is required; body, assignees, labels and milestone are optional. Returns the new issue with its number and URL.",
        &[("owner", "string", "Account that owns the repository."), ("repo", "string", "Repository name."), ("title", "string", "Issue title."), ("body", "string", "Issue text in GitHub-flavoured Markdown."), ("labels", "array", "Labels to apply.")]),
    ("create_pull_request", "Opens a pull request that merges the head branch into the base branch. Set draft to open it as a draft.",
        &[("owner", "string", "Repository owner."), ("repo", "string", "Repository name."), ("head", "string", "Branch that holds your changes."), ("base", "string", "Branch the changes should be merged into."), ("draft", "boolean", "Open as a draft.")]),
    ("search_repositories", "Searches GitHub for repositories matching a query in GitHub search syntax, e.g. 'language:rust stars:>1000'. Results are paged; use page and perPage to walk through them.",
        &[("query", "string", "Search query."), ("page", "number", "Page number."), ("perPage", "number", "Results per page, at most 100.")]),
    ("slack_post_message", "Posts a message to a Slack channel as the configured bot user.",
        &[("channel_id", "string", "ID of the channel to post in."), ("text", "string", "Message text to post.")]),
    ("browser_screenshot", "Takes a screenshot of the current page, or of one element chosen by a CSS selector.",
        &[("name", "string", "Name for the screenshot."), ("selector", "string", "CSS selector of the element to capture.")]),
    ("brave_web_search", "Runs a web search through the Brave Search API and returns titles, URLs and snippets. Good for news, recent events and general questions. At most 20 results per request; use offset to page through more.",
        &[("query", "string", "Search query, at most 400 characters."), ("count", "number", "Number of results."), ("offset", "number", "Pagination offset.")]),
];

fn tools(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let (name, description, params) = SHAPES[i % SHAPES.len()];
            let mut props = serde_json::Map::new();
            for (p, ty, d) in params {
                let mut schema = json!({"type": ty, "description": d});
                if *ty == "array" {
                    schema["items"] = json!({"type": "string"});
                }
                props.insert((*p).to_owned(), schema);
            }
            let required: Vec<&str> = params.iter().take(1).map(|p| p.0).collect();
            json!({
                "name": format!("{name}_{i}"),
                "title": name.replace('_', " "),
                "description": description,
                "inputSchema": {
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    "type": "object",
                    "properties": props,
                    "required": required,
                },
                "annotations": {"readOnlyHint": i % 3 == 0, "openWorldHint": false},
            })
        })
        .collect()
}

fn ordinary_text(bytes: usize) -> String {
    let paras = [
        "The gateway forwards each request to the upstream server after the policy engine has allowed it. \
         Responses are inspected before they reach the client; secrets are redacted and the audit log \
         records what happened.\n\n",
        "## Configuration\n\nSet `listen.addr` to the address to bind. Upstreams are declared in \
         `[[upstream]]` tables with a name and a URL or a command. Restart is not needed after a policy \
         change: run `portcullis policy reload`.\n\n",
        "fn handle(req: Request) -> Result<Response> {\n    let body = req.body()?;\n    \
         let parsed: Value = serde_json::from_slice(&body)?;\n    Ok(Response::json(parsed))\n}\n\n",
        "| column | type | nullable |\n|---|---|---|\n| id | integer | no |\n| name | text | yes |\n\n",
        "Operators can list open sessions, end one, or quarantine an identity. Each action is recorded \
         with who did it and why, and the record is chained to the previous one.\n\n",
    ];
    let mut s = String::with_capacity(bytes + 512);
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(paras[i % paras.len()]);
        i += 1;
    }
    s.truncate(bytes);
    s
}

/// Ordinary documentation that names what injections are made of (the
/// user, the system, instructions, the AI, the conversation, addresses,
/// generics), so every matcher has somewhere to look and nothing to find.
fn wordy_text(bytes: usize) -> String {
    let paras = [
        "The user can change the system settings at any time. See \
         https://docs.example.com/setup for the installation instructions, or write to \
         support@example.com if the admin console does not load.\n\n",
        "Our chat widget keeps each message for 30 days. The AI model summarises the \
         conversation history when the user asks for it, and the summary is shown now and \
         then in the sidebar.\n\n",
        "fn load(path: &Path) -> Result<Config, Error> {\n    let text = \
         std::fs::read_to_string(path)?; // one system call\n    \
         toml::from_str(&text).map_err(Error::from)\n}\n\n",
        "| tool | purpose | admin only |\n|---|---|---|\n| backup | copies the database | \
         yes |\n| report | sends a summary to the team | no |\n\n",
        "Important: the developer guidelines ask you to follow the coding style. Previous \
         releases are listed in the changelog; ignore the warnings about deprecated flags \
         if you use version 2 of the tool.\n\n",
    ];
    let mut s = String::with_capacity(bytes + 512);
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(paras[i % paras.len()]);
        i += 1;
    }
    s.truncate(bytes);
    s
}

fn bench(c: &mut Criterion) {
    let list = tools(100);
    let known: Vec<String> = tools(100)
        .iter()
        .flat_map(|t| {
            let n = t["name"].as_str().unwrap_or_default().to_owned();
            [format!("other__{n}"), n]
        })
        .collect();
    let ctx = Context::new(known);
    let total: usize = list.iter().map(|t| scan_tool(t, &ctx).len()).sum();
    assert_eq!(total, 0, "the benchmark tools should be clean");

    let mut g = c.benchmark_group("poison");
    g.throughput(Throughput::Elements(list.len() as u64));
    g.bench_function("scan_tool x100", |b| {
        b.iter(|| {
            let mut n = 0;
            for t in &list {
                n += scan_tool(black_box(t), &ctx).len();
            }
            n
        })
    });
    g.finish();

    c.bench_function("poison/scan_tool one small", |b| {
        let t = &list[5];
        b.iter(|| scan_tool(black_box(t), &ctx))
    });

    let text = ordinary_text(64 * 1024);
    assert!(scan_result_text(&text).is_empty());
    let mut g = c.benchmark_group("inject");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("scan_result_text 64KiB", |b| {
        b.iter(|| scan_result_text(black_box(&text)))
    });
    let wordy = wordy_text(64 * 1024);
    assert!(scan_result_text(&wordy).is_empty());
    g.bench_function("scan_result_text 64KiB wordy", |b| {
        b.iter(|| scan_result_text(black_box(&wordy)))
    });
    // Typographic punctuation makes a text non-ASCII: the Unicode rules
    // read it all, and normalisation comes first.
    let typographic = text.replace(". ", "\u{2019}s \u{2014} ");
    assert!(scan_result_text(&typographic).is_empty());
    g.bench_function("scan_result_text 64KiB typographic", |b| {
        b.iter(|| scan_result_text(black_box(&typographic)))
    });
    g.finish();

    let mut g = c.benchmark_group("inject");
    g.bench_function("scan_result_text small", |b| {
        b.iter(|| scan_result_text(black_box("Echo: hi")))
    });
    let small = json!({"content": [{"type": "text", "text": "Echo: hi"}], "isError": false});
    g.bench_function("scan_result small", |b| {
        b.iter(|| scan_result(black_box(&small)))
    });
    let kib = json!({"content": [{"type": "text", "text": wordy_text(1024)}]});
    assert!(scan_result(&kib).is_empty());
    g.bench_function("scan_result 1KiB wordy", |b| {
        b.iter(|| scan_result(black_box(&kib)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
