//! Cost of DLP on tool results with the default policy (secrets redacted,
//! personal data flagged): a 1 MiB result of mixed prose, code and logs
//! with a few secrets and some personal data (target ≤ 2 ms), a 1 KiB
//! result (target: a few µs), and the same 1 MiB streamed in 4 KiB chunks.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use portcullis_inspect::dlp::{inspect, DlpPolicy, StreamScanner};
use serde_json::{json, Value};

const PROSE: &[&str] = &[
    "The migration moved every table to the new cluster over the weekend. Reads were served from the old replicas until the final cutover, which took about four minutes. ",
    "If the build fails on a fresh checkout, delete the cache folder and run the setup script again; it fetches the toolchain pinned in the repository. ",
    "We compared three approaches to retrying failed uploads. Exponential backoff with jitter kept the error rate lowest without overloading the storage service. ",
    "Customers in the pilot asked for a weekly summary instead of daily mail, so the digest now goes out on Monday mornings in each recipient's time zone. ",
    "The parser accepts both the old and the new header format for one more release. After that, files written before version 3 need a one-off conversion. ",
    "Token usage went down by a third after the prompt was shortened, and the answers did not get worse on the evaluation set. ",
];

const CODE: &[&str] = &[
    "fn parse_header(buf: &[u8]) -> Result<Header, Error> {\n    let len = u32::from_be_bytes(buf[0..4].try_into()?);\n    if len as usize > buf.len() {\n        return Err(Error::Truncated { want: len, have: buf.len() });\n    }\n    Ok(Header { len, kind: buf[4] })\n}\n",
    "def load_config(path):\n    \"\"\"Reads the settings file; the password comes from the environment.\"\"\"\n    with open(path) as f:\n        cfg = yaml.safe_load(f)\n    cfg['db']['password'] = os.environ['DB_PASSWORD']\n    cfg['max_tokens'] = int(cfg.get('max_tokens', 4096))\n    return cfg\n",
    "export async function fetchPage(cursor) {\n  const res = await fetch(`${API_BASE}/items?cursor=${cursor}&limit=100`, {\n    headers: { Authorization: `Bearer ${getToken()}` },\n  });\n  const { items, next_page_token } = await res.json();\n  return { items, next: next_page_token };\n}\n",
    "    /**\n     * @param user the account to notify\n     * @return true when the message was queued\n     */\n    @Override\n    public boolean notify(User user) {\n        return queue.offer(new Message(user.getEmail(), template));\n    }\n",
    "SELECT o.id, o.total, c.country\n  FROM orders o JOIN customers c ON c.id = o.customer_id\n WHERE o.created_at >= '2024-01-01' AND o.status = 'paid'\n ORDER BY o.total DESC LIMIT 50;\n",
];

/// A small deterministic generator, so every run measures the same text.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        let n = self.next() as usize % xs.len().max(1);
        xs.get(n).copied().unwrap_or("")
    }

    fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from_digit((self.next() % 16) as u32, 16).unwrap_or('0'))
            .collect()
    }

    fn alnum(&mut self, n: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..n)
            .map(|_| {
                char::from(
                    A.get(self.next() as usize % A.len())
                        .copied()
                        .unwrap_or(b'x'),
                )
            })
            .collect()
    }
}

fn log_line(r: &mut Lcg, i: u64) -> String {
    let path = r.pick(&[
        "/api/v1/orders",
        "/api/v1/users/me",
        "/healthz",
        "/static/app.js",
        "/api/v1/search?q=shoes",
    ]);
    let status = r.pick(&["200", "200", "200", "201", "304", "404", "500"]);
    let mut line = format!(
        "2024-03-{:02}T{:02}:{:02}:{:02}.{:03}Z INFO req={}-{}-4{}-a{}-{} ip=10.{}.{}.{} {} {} {} {}ms sha={}",
        1 + i % 28,
        r.next() % 24,
        r.next() % 60,
        r.next() % 60,
        r.next() % 1000,
        r.hex(8),
        r.hex(4),
        r.hex(3),
        r.hex(3),
        r.hex(12),
        r.next() % 256,
        r.next() % 256,
        r.next() % 256,
        r.pick(&["GET", "POST", "PUT"]),
        path,
        status,
        r.next() % 900,
        r.hex(40),
    );
    if i.is_multiple_of(37) {
        line.push_str(&format!(" user=user{}@example.com", r.next() % 1000));
    }
    if i.is_multiple_of(53) {
        line.push_str(" amount=129.99 currency=EUR");
    }
    line.push('\n');
    line
}

/// About `size` bytes of mixed text with a handful of secrets.
fn mixed_text(size: usize) -> String {
    let mut r = Lcg(7);
    let mut s = String::with_capacity(size + 4096);
    let mut i = 0u64;
    let secrets = [
        format!("GITHUB_TOKEN=ghp_{}\n", r.alnum(36)),
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n".to_string(),
        format!(
            "-----BEGIN RSA PRIVATE KEY-----\n{}\n{}\n{}\n-----END RSA PRIVATE KEY-----\n",
            r.alnum(64),
            r.alnum(64),
            r.alnum(40)
        ),
        format!("Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.{}\n", r.alnum(43)),
        format!("db_password: \"{}\"\n", r.alnum(24)),
    ];
    while s.len() < size {
        match r.next() % 10 {
            0..=3 => s.push_str(r.pick(PROSE)),
            4..=5 => s.push_str(r.pick(CODE)),
            _ => s.push_str(&log_line(&mut r, i)),
        }
        if i.is_multiple_of(97) {
            s.push_str("Contact the on-call engineer at +44 20 7946 0958 or oncall@example.org.\n");
        }
        if i % 600 == 300 {
            let k = (i / 600) as usize % secrets.len();
            s.push_str(secrets.get(k).map_or("", String::as_str));
        }
        i += 1;
    }
    s
}

fn result_of(text: String) -> Value {
    json!({
        "content": [{"type": "text", "text": text}],
        "isError": false
    })
}

fn bench(c: &mut Criterion) {
    let policy = DlpPolicy::default();
    let big = result_of(mixed_text(1 << 20));
    let len = big.to_string().len() as u64;
    let mut g = c.benchmark_group("dlp");
    g.throughput(Throughput::Bytes(len));
    g.bench_function("inspect 1 MiB result", |b| {
        b.iter_batched(
            || big.clone(),
            |mut v| black_box(inspect(&mut v, &policy)),
            BatchSize::LargeInput,
        )
    });
    let text = mixed_text(1 << 20);
    g.bench_function("stream 1 MiB in 4 KiB chunks", |b| {
        b.iter(|| {
            let mut sc = StreamScanner::new(&policy);
            let mut n = 0;
            let mut rest = text.as_str();
            while !rest.is_empty() {
                let mut k = rest.len().min(4096);
                while !rest.is_char_boundary(k) {
                    k += 1;
                }
                let (chunk, tail) = rest.split_at(k);
                n += sc.push(chunk).text.len();
                rest = tail;
            }
            n + sc.finish().text.len()
        })
    });
    g.finish();

    let mut small_text = mixed_text(900);
    let mut cut = small_text.len().min(900);
    while !small_text.is_char_boundary(cut) {
        cut -= 1;
    }
    small_text.truncate(cut);
    let small = json!({
        "content": [{"type": "text", "text": small_text}],
        "structuredContent": {"rows": [{"id": 1, "owner": "ana@example.com", "total": 42.5}, {"id": 2, "owner": "li@example.com", "total": 7}]},
        "isError": false
    });
    let mut g = c.benchmark_group("dlp");
    g.throughput(Throughput::Bytes(small.to_string().len() as u64));
    g.bench_function("inspect 1 KiB result", |b| {
        b.iter_batched(
            || small.clone(),
            |mut v| black_box(inspect(&mut v, &policy)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
