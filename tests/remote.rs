//! The remote cache, for real: store A runs a recipe and pushes; an empty
//! store B runs the same recipe with `--remote` and computes nothing, ending
//! with byte-identical entries; a flipped byte in the remote is refused on
//! pull and never enters a store. Against a directory, an S3-compatible
//! server (moto's server mode) and Azure's emulator (Azurite), each started
//! here on a free port of 127.0.0.1; under CI=true a missing `moto_server`
//! or `azurite-blob` fails the test.

mod common;

use common::{Workspace, free_port, stage_fields, text};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RECIPE: &str = "\
name: shared
seed: 3
stages:
  a:
    op: emit
    with: { text: \"hello \", repeat: 3 }
  b:
    op: emit
    with: { text: world }
  joined:
    op: concat
    inputs: { parts: [a, b] }
    with: { separator: \"|\" }
";

/// Replaces the bytes of one object (`objects/..`) in a remote.
type Corrupter = Box<dyn Fn(&str, &[u8])>;

/// Where the remote is, and how each command reaches it.
struct RemoteUnderTest {
    url: String,
    env: Vec<(String, String)>,
    corrupt: Corrupter,
    _server: Option<Server>,
}

impl RemoteUnderTest {
    fn directory(dir: &Path) -> Self {
        let root = dir.to_path_buf();
        Self {
            url: dir.to_string_lossy().into_owned(),
            env: Vec::new(),
            corrupt: Box::new(move |object: &str, bytes: &[u8]| {
                std::fs::write(root.join(object), bytes).unwrap();
            }),
            _server: None,
        }
    }

    fn s3(server: Server) -> Self {
        let port = server.port;
        let endpoint = format!("http://127.0.0.1:{port}");
        Self {
            url: "s3://distillery-test/cache".into(),
            env: vec![
                ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
                ("AWS_REGION".into(), "us-east-1".into()),
                ("AWS_ENDPOINT_URL".into(), endpoint),
                ("AWS_ALLOW_HTTP".into(), "true".into()),
                // No profile files of the machine's user.
                ("AWS_SHARED_CREDENTIALS_FILE".into(), "/nonexistent".into()),
                ("AWS_CONFIG_FILE".into(), "/nonexistent".into()),
            ],
            // moto refuses unsigned writes to an existing object: boto3
            // (which moto depends on) signs this one.
            corrupt: Box::new(move |object: &str, bytes: &[u8]| {
                let script = format!(
                    "import sys, boto3\n\
                     s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{port}', \
                     aws_access_key_id='testing', aws_secret_access_key='testing', \
                     region_name='us-east-1')\n\
                     s3.put_object(Bucket='distillery-test', Key='cache/{object}', \
                     Body=sys.stdin.buffer.read())\n"
                );
                let mut child = Command::new("python3")
                    .args(["-c", &script])
                    .stdin(Stdio::piped())
                    .spawn()
                    .unwrap();
                child.stdin.take().unwrap().write_all(bytes).unwrap();
                assert!(
                    child.wait().unwrap().success(),
                    "boto3 could not write {object}"
                );
            }),
            _server: Some(server),
        }
    }

    fn azure(server: Server) -> Self {
        let port = server.port;
        Self {
            url: "az://distillery-test/cache".into(),
            env: vec![
                ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
                (
                    "AZURITE_BLOB_STORAGE_URL".into(),
                    format!("http://127.0.0.1:{port}"),
                ),
            ],
            corrupt: Box::new(move |object: &str, bytes: &[u8]| {
                azurite_put(port, &format!("distillery-test/cache/{object}"), bytes);
            }),
            _server: Some(server),
        }
    }

    fn run(&self, ws: &Workspace, args: &[&str]) -> std::process::Output {
        let mut cmd = ws.cmd(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

/// A test server on a free port, stopped when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program` (found on PATH) with the arguments `args` gives for a
/// free port of 127.0.0.1, and waits until it listens there. Without the
/// program the test is skipped, except under CI=true, where it fails.
fn start_server(program: &str, install: &str, args: impl Fn(u16) -> Vec<String>) -> Option<Server> {
    let Some(path) = which(program) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{program} is missing: `{install}` (.ci/run installs it)"
        );
        eprintln!("skipped: this remote needs {program} ({install})");
        return None;
    };
    let port = free_port();
    let child = Command::new(path)
        .args(args(port))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{program} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(server)
}

/// moto's S3 server, with the bucket the test uses.
fn moto() -> Option<Server> {
    let server = start_server("moto_server", "pip install \"moto[server]\"", |port| {
        ["-H", "127.0.0.1", "-p", &port.to_string()]
            .map(String::from)
            .to_vec()
    })?;
    // moto accepts unsigned requests: make the bucket.
    let status = http(server.port, "PUT", "/distillery-test", b"");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    Some(server)
}

/// Azurite, with the container the test uses.
fn azurite() -> Option<Server> {
    let server = start_server("azurite-blob", "npm install -g azurite", |port| {
        [
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--inMemoryPersistence",
            "--silent",
        ]
        .map(String::from)
        .to_vec()
    })?;
    azurite_put(server.port, "distillery-test?restype=container", b"");
    Some(server)
}

/// A request Azurite accepts: signed with the emulator's well-known account
/// key (Shared Key), by Python's standard library. `path` is
/// `CONTAINER?restype=container` to make a container, else a blob to write.
fn azurite_put(port: u16, path: &str, body: &[u8]) {
    const SIGN: &str = r#"
import base64, email.utils, hashlib, hmac, sys, urllib.request
account = "devstoreaccount1"
key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
port, path = sys.argv[1], sys.argv[2]
body = sys.stdin.buffer.read()
resource, _, query = path.partition("?")
headers = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": "2021-08-06",
           "Content-Type": "application/octet-stream"}
if not query:
    headers["x-ms-blob-type"] = "BlockBlob"
canonical = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()) if k.startswith("x-ms-"))
canonical += f"/{account}/{account}/{resource}"
for pair in filter(None, query.split("&")):
    k, _, v = pair.partition("=")
    canonical += f"\n{k}:{v}"
length = str(len(body)) if body else ""
to_sign = "\n".join(["PUT", "", "", length, "", headers["Content-Type"]] + [""] * 6) + "\n" + canonical
signature = hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()
headers["Authorization"] = f"SharedKey {account}:{base64.b64encode(signature).decode()}"
url = f"http://127.0.0.1:{port}/{account}/{path}"
urllib.request.urlopen(urllib.request.Request(url, data=body, method="PUT", headers=headers))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SIGN, &port.to_string(), path])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    assert!(
        child.wait().unwrap().success(),
        "Azurite refused PUT {path}"
    );
}

/// One plain HTTP/1.1 request to 127.0.0.1; returns the status line.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.lines().next().unwrap_or_default().to_string()
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// Every file of every entry in a store, by path under `store/`, as text
/// (the test ops write text). Manifests are compared apart: they record
/// when and how long their store computed the entry.
fn entries(ws: &Workspace) -> Vec<(String, String)> {
    let root = ws.store().join("store");
    let mut files: Vec<(String, String)> = distillery_engine::fsutil::files_under(&root)
        .unwrap()
        .into_iter()
        .map(|rel| {
            let bytes = std::fs::read(root.join(&rel)).unwrap();
            (rel.to_string_lossy().into_owned(), text(&bytes))
        })
        .collect();
    files.sort();
    files
}

/// The entries' output files, and each manifest's key, material and output
/// digests: what must agree between stores that computed independently.
fn outputs(ws: &Workspace) -> Vec<(String, String)> {
    entries(ws)
        .into_iter()
        .map(|(path, content)| {
            if !path.ends_with("manifest.json") {
                return (path, content);
            }
            let m: serde_json::Value = serde_json::from_str(&content).unwrap();
            (
                path,
                format!("{} {} {}", m["key"], m["material"], m["outputs"]),
            )
        })
        .collect()
}

fn outcomes(out: &std::process::Output) -> Vec<(String, String)> {
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
    stage_fields(&report, "outcome")
}

fn round_trip(remote: &RemoteUnderTest) {
    // Store A computes and pushes.
    let a = Workspace::new();
    a.write("recipe.yaml", RECIPE);
    let out = remote.run(&a, &["run", "recipe.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let push = remote.run(
        &a,
        &[
            "cache",
            "push",
            "recipe.yaml",
            "--remote",
            &remote.url,
            "--json",
        ],
    );
    assert!(push.status.success(), "{}", text(&push.stderr));
    let pushed: serde_json::Value = serde_json::from_slice(&push.stdout).unwrap();
    for stage in pushed["stages"].as_array().unwrap() {
        assert_eq!(stage["outcome"], "pushed", "{stage}");
    }
    // A second push finds everything there.
    let again = remote.run(
        &a,
        &[
            "cache",
            "push",
            "recipe.yaml",
            "--remote",
            &remote.url,
            "--json",
        ],
    );
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    for stage in again["stages"].as_array().unwrap() {
        assert_eq!(stage["outcome"], "present", "{stage}");
    }

    // Store B reads through the remote and computes nothing.
    let b = Workspace::new();
    b.write("recipe.yaml", RECIPE);
    let out = remote.run(
        &b,
        &["run", "recipe.yaml", "--remote", &remote.url, "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (stage, outcome) in outcomes(&out) {
        assert_eq!(outcome, "pulled", "{stage}");
    }
    assert!(b.log().is_empty(), "ops ran in store B: {:?}", b.log());
    assert_eq!(entries(&a), entries(&b), "the stores differ");
    let status = b.run(&["status", "recipe.yaml"]);
    let status = text(&status.stdout);
    assert_eq!(status.matches("up to date").count(), 3, "{status}");

    // A flipped byte in the remote is refused and stored nowhere.
    let joined = a.key_of("recipe.yaml", "joined");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(a.store().join("store").join(&joined).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let digest = manifest["outputs"]["out.txt"]["blake3"].as_str().unwrap();
    let mut bytes =
        std::fs::read(a.store().join("store").join(&joined).join("out/out.txt")).unwrap();
    bytes[0] ^= 0x20;
    (remote.corrupt)(
        &format!("objects/{}/{}", &digest[..2], &digest[2..]),
        &bytes,
    );
    let c = Workspace::new();
    c.write("recipe.yaml", RECIPE);
    let pull = remote.run(
        &c,
        &["cache", "pull", "recipe.yaml", "--remote", &remote.url],
    );
    assert_eq!(pull.status.code(), Some(1), "{}", text(&pull.stderr));
    let stderr = text(&pull.stderr);
    assert!(stderr.contains("joined: FAILED"), "{stderr}");
    assert!(stderr.contains("`out.txt` of entry"), "{stderr}");
    assert!(stderr.contains("is corrupted"), "{stderr}");
    assert!(!c.store().join("store").join(&joined).exists());
    // The other stages came through; nothing half-written is left.
    assert!(
        c.store()
            .join("store")
            .join(c.key_of("recipe.yaml", "a"))
            .exists()
    );
    let leftovers: Vec<_> = std::fs::read_dir(c.store().join("tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Reading through, the corrupted stage is computed instead, with a warning.
    let out = remote.run(
        &c,
        &["run", "recipe.yaml", "--remote", &remote.url, "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("joined: warning:"),
        "{}",
        text(&out.stderr)
    );
    let outcomes: std::collections::BTreeMap<_, _> = outcomes(&out).into_iter().collect();
    assert_eq!(outcomes["joined"], "ran");
    assert_eq!(
        c.output_of("recipe.yaml", "joined"),
        "hello hello hello |world"
    );
}

#[test]
fn a_directory_remote_round_trips_and_refuses_a_corrupted_object() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(&RemoteUnderTest::directory(&dir.path().join("remote")));
}

#[test]
fn an_s3_remote_round_trips_and_refuses_a_corrupted_object() {
    let Some(server) = moto() else { return };
    round_trip(&RemoteUnderTest::s3(server));
}

#[test]
fn an_azure_remote_round_trips_and_refuses_a_corrupted_object() {
    let Some(server) = azurite() else { return };
    round_trip(&RemoteUnderTest::azure(server));
}

#[test]
fn run_push_writes_back_and_concurrent_pushes_of_one_key_are_safe() {
    let dir = tempfile::tempdir().unwrap();
    let remote = RemoteUnderTest::directory(&dir.path().join("remote"));
    let stores: Vec<Workspace> = (0..3)
        .map(|_| {
            let ws = Workspace::new();
            ws.write("recipe.yaml", RECIPE);
            let out = ws.run(&["run", "recipe.yaml"]);
            assert!(out.status.success());
            ws
        })
        .collect();
    // Three stores push the same keys at the same time.
    let children: Vec<Child> = stores
        .iter()
        .map(|ws| {
            ws.cmd(&["cache", "push", "recipe.yaml", "--remote", &remote.url])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let fresh = Workspace::new();
    fresh.write("recipe.yaml", RECIPE);
    let pull = fresh.run(&["cache", "pull", "recipe.yaml", "--remote", &remote.url]);
    assert!(pull.status.success(), "{}", text(&pull.stderr));
    assert_eq!(outputs(&fresh), outputs(&stores[0]));

    // `run --push` sends what it computes.
    let other = tempfile::tempdir().unwrap();
    let url = other.path().join("r").to_string_lossy().into_owned();
    let writer = Workspace::new();
    writer.write("recipe.yaml", RECIPE);
    let out = writer.run(&["run", "recipe.yaml", "--remote", &url, "--push"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reader = Workspace::new();
    reader.write("recipe.yaml", RECIPE);
    let out = reader.run(&["run", "recipe.yaml", "--remote", &url, "--json"]);
    for (stage, outcome) in outcomes(&out) {
        assert_eq!(outcome, "pulled", "{stage}");
    }
}

#[test]
fn a_changed_local_file_is_not_pushed_and_named_stages_must_move() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("remote").to_string_lossy().into_owned();
    let ws = Workspace::new();
    ws.write("recipe.yaml", RECIPE);
    assert!(
        ws.run(&["run", "recipe.yaml", "--until", "a"])
            .status
            .success()
    );
    let key = ws.key_of("recipe.yaml", "a");
    std::fs::write(
        ws.store().join("store").join(&key).join("out/out.txt"),
        "tampered",
    )
    .unwrap();
    let push = ws.run(&["cache", "push", "recipe.yaml", "a", "--remote", &url]);
    assert_eq!(push.status.code(), Some(1));
    assert!(
        text(&push.stderr).contains("no longer matches its manifest: `out.txt` changed"),
        "{}",
        text(&push.stderr)
    );
    assert!(!dir.path().join("remote/entries").join(&key).exists());
    // `b` is not stored: naming it fails, pushing everything only reports it.
    let named = ws.run(&["cache", "push", "recipe.yaml", "b", "--remote", &url]);
    assert_eq!(named.status.code(), Some(1));
    assert!(text(&named.stderr).contains("b: not stored here, nothing to push"));
    let pull = ws.run(&["cache", "pull", "recipe.yaml", "b", "--remote", &url]);
    assert_eq!(pull.status.code(), Some(1));
    assert!(text(&pull.stderr).contains("b: not in the remote"));

    let bad = ws.run(&["cache", "push", "recipe.yaml", "--remote", "ftp://host/x"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("invalid remote `ftp://host/x`"));
}

#[test]
fn the_config_file_names_the_remote_and_its_mistakes_are_shown_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("remote").to_string_lossy().into_owned();
    let a = Workspace::new();
    a.write("recipe.yaml", RECIPE);
    let config = a.write("config.yaml", &format!("remote: {url}\n"));
    let out = a
        .cmd(&["run", "recipe.yaml", "--push"])
        .env("DISTILLERY_CONFIG", &config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let b = Workspace::new();
    b.write("recipe.yaml", RECIPE);
    let out = b
        .cmd(&["run", "recipe.yaml", "--json"])
        .env("DISTILLERY_CONFIG", &config)
        .output()
        .unwrap();
    for (stage, outcome) in outcomes(&out) {
        assert_eq!(outcome, "pulled", "{stage}");
    }
    // Without a remote anywhere, `cache pull` says where one goes.
    let out = b.run(&["cache", "pull", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no remote: give --remote URL"));

    let bad = b.write("bad.yaml", "remote: [1]\nexecuter: slurm\n");
    let out = b
        .cmd(&["run", "recipe.yaml"])
        .env("DISTILLERY_CONFIG", &bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("bad.yaml:1:9"), "{stderr}");
    assert!(
        stderr.contains("`remote` must be a directory or a URL"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `executor`?"), "{stderr}");
}

/// A file larger than one part goes to S3 in parts under a staging name and
/// is copied to its content name only once its digest is known.
#[test]
fn a_large_file_goes_to_s3_in_parts_and_a_changed_one_never_arrives() {
    let Some(server) = moto() else { return };
    let remote = RemoteUnderTest::s3(server);
    // 24,000 characters written 1,000 times: 24 MB, two parts.
    let large = format!(
        "name: large\nstages:\n  big:\n    op: emit\n    with: {{ text: \"{}\", repeat: 1000 }}\n",
        "0123456789abcdef".repeat(1500)
    );
    let a = Workspace::new();
    a.write("recipe.yaml", &large);
    assert!(remote.run(&a, &["run", "recipe.yaml"]).status.success());
    let key = a.key_of("recipe.yaml", "big");
    let output = a.store().join("store").join(&key).join("out/out.txt");
    assert_eq!(std::fs::metadata(&output).unwrap().len(), 24_000_000);

    // Changed after it was stored: refused, and nothing reaches the remote.
    let original = std::fs::read(&output).unwrap();
    let mut changed = original.clone();
    changed[12_345_678] ^= 1;
    std::fs::write(&output, &changed).unwrap();
    let push = remote.run(
        &a,
        &["cache", "push", "recipe.yaml", "--remote", &remote.url],
    );
    assert_eq!(push.status.code(), Some(1), "{}", text(&push.stderr));
    assert!(text(&push.stderr).contains("no longer matches its manifest"));
    let b = Workspace::new();
    b.write("recipe.yaml", &large);
    let pull = remote.run(
        &b,
        &[
            "cache",
            "pull",
            "recipe.yaml",
            "big",
            "--remote",
            &remote.url,
        ],
    );
    assert!(
        text(&pull.stderr).contains("big: not in the remote"),
        "{}",
        text(&pull.stderr)
    );

    // Restored, it goes through and comes back whole.
    std::fs::write(&output, &original).unwrap();
    let push = remote.run(
        &a,
        &["cache", "push", "recipe.yaml", "--remote", &remote.url],
    );
    assert!(push.status.success(), "{}", text(&push.stderr));
    let pull = remote.run(
        &b,
        &["cache", "pull", "recipe.yaml", "--remote", &remote.url],
    );
    assert!(pull.status.success(), "{}", text(&pull.stderr));
    assert_eq!(entries(&a), entries(&b));
}
