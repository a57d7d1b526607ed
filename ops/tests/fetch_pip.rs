//! The `fetch` op's `pip` source through the engine, with a wheel built by
//! the test and pip pointed at it (`PIP_NO_INDEX=1`, `PIP_FIND_LINKS`), so no
//! index is contacted. Skipped where `python3 -m pip` does not run (a
//! failure under `CI=true`).
//!
//! This file holds one test because it sets environment variables for the
//! pip child process: no other test thread reads the environment meanwhile.

mod engine_support;

use distillery_engine::Store;
use distillery_engine::run::StageOutcome;
use engine_support::run_recipe as run;
use sha2::Digest as _;
use std::io::Write;
use std::path::Path;

const DATA: &[u8] = b"tiny weights from a wheel\n";

/// `tinypkg-0.1.0-py3-none-any.whl` with metadata pip accepts and a data file.
fn build_wheel(dir: &Path) {
    let path = dir.join("tinypkg-0.1.0-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::FileOptions::default();
    let files: [(&str, &[u8]); 4] = [
        ("tinypkg/__init__.py", b""),
        ("tinypkg/data/weights.bin", DATA),
        (
            "tinypkg-0.1.0.dist-info/METADATA",
            b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1.0\n",
        ),
        (
            "tinypkg-0.1.0.dist-info/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: distillery-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
    ];
    let mut record = String::new();
    for (name, body) in files {
        zip.start_file(name, options).unwrap();
        zip.write_all(body).unwrap();
        record.push_str(&format!("{name},,{}\n", body.len()));
    }
    record.push_str("tinypkg-0.1.0.dist-info/RECORD,,\n");
    zip.start_file("tinypkg-0.1.0.dist-info/RECORD", options)
        .unwrap();
    zip.write_all(record.as_bytes()).unwrap();
    zip.finish().unwrap();
}

fn recipe(file: &str, sha256: &str) -> String {
    format!(
        "name: pip-fetch\nstages:\n  weights:\n    op: fetch\n    with:\n      pip: tinypkg==0.1.0\n      file: {file}\n      sha256: {sha256}\n"
    )
}

#[test]
fn a_file_is_taken_from_a_pinned_wheel_that_pip_downloads() {
    let Some(()) =
        testkit::require_tool("python3 with pip", &["python3", "-m", "pip", "--version"])
    else {
        return;
    };
    let wheels = tempfile::tempdir().unwrap();
    build_wheel(wheels.path());
    // SAFETY: this test binary runs this one test, so no other thread reads
    // or writes the environment while it changes.
    unsafe {
        std::env::set_var("PIP_NO_INDEX", "1");
        std::env::set_var("PIP_FIND_LINKS", wheels.path());
    }
    let digest: String = sha2::Sha256::digest(DATA)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let ws = tempfile::tempdir().unwrap();
    let report = run(ws.path(), &recipe("tinypkg/data/weights.bin", &digest));
    let stage = &report.stages[0];
    assert!(
        matches!(stage.outcome, StageOutcome::Ran { .. }),
        "{report:?}"
    );
    let out = Store::open(&ws.path().join(".distillery"))
        .unwrap()
        .output_dir(&stage.key);
    assert_eq!(std::fs::read(out.join("weights.bin")).unwrap(), DATA);
    let names: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert_eq!(names.len(), 1, "only the one file is stored");

    // A path the wheel does not hold: the error lists what it does hold.
    let ws = tempfile::tempdir().unwrap();
    let report = run(ws.path(), &recipe("tinypkg/weights.bin", &digest));
    let StageOutcome::Failed { error } = &report.stages[0].outcome else {
        panic!("{report:?}")
    };
    assert!(
        error.contains("`tinypkg/weights.bin` is not in tinypkg-0.1.0-py3-none-any.whl"),
        "{error}"
    );
    assert!(error.contains("`tinypkg/data/weights.bin`"), "{error}");

    // A version pip cannot find: pip's own complaint is in the error.
    let ws = tempfile::tempdir().unwrap();
    let report = run(
        ws.path(),
        &recipe("tinypkg/data/weights.bin", &digest).replace("0.1.0", "9.9.9"),
    );
    let StageOutcome::Failed { error } = &report.stages[0].outcome else {
        panic!("{report:?}")
    };
    assert!(
        error.contains("pip download tinypkg==9.9.9 failed"),
        "{error}"
    );
    assert!(
        error.contains("No matching distribution") || error.contains("Could not find"),
        "{error}"
    );
}
