//! Hand-built archives, benign and malicious. Each malicious one is
//! extracted into `base/out`; the test checks the error names the entry and
//! that nothing appeared beside `out` (the attacks all aim at `base/`).

use super::*;
use std::io::Write;

/// A tar archive written header by header, so that names and link targets
/// the `tar` crate's builder refuses (absolute, `..`) can be stored.
struct RawTar(Vec<u8>);

impl RawTar {
    fn new() -> Self {
        Self(Vec::new())
    }

    fn entry(mut self, name: &str, kind: tar::EntryType, link: &str, body: &[u8]) -> Self {
        let mut header = tar::Header::new_old();
        {
            let raw = header.as_old_mut();
            raw.name = [0; 100];
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            raw.linkname = [0; 100];
            raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        self.0.extend_from_slice(header.as_bytes());
        self.0.extend_from_slice(body);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }

    fn file(self, name: &str, body: &str) -> Self {
        self.entry(name, tar::EntryType::Regular, "", body.as_bytes())
    }

    fn dir(self, name: &str) -> Self {
        self.entry(name, tar::EntryType::Directory, "", b"")
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Symlink, target, b"")
    }

    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Link, target, b"")
    }

    fn bytes(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

/// A zip archive; `device` entries get a character-device mode.
fn zip_bytes(entries: &[(&str, ZipKind)]) -> Vec<u8> {
    let mut cursor = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut cursor);
        let options = zip::write::FileOptions::default();
        for (name, kind) in entries {
            match kind {
                ZipKind::File(body) => {
                    zip.start_file(*name, options).unwrap();
                    zip.write_all(body.as_bytes()).unwrap();
                }
                ZipKind::Dir => zip.add_directory(*name, options).unwrap(),
                ZipKind::Symlink(target) | ZipKind::Device(target) => {
                    zip.add_symlink(*name, *target, options).unwrap()
                }
            }
        }
        zip.finish().unwrap();
    }
    let mut bytes = cursor.into_inner();
    if entries.iter().any(|(_, k)| matches!(k, ZipKind::Device(_))) {
        // The writer only makes links; turn the link mode (0o120777) in the
        // central directory into a character device's (0o020644).
        let link = (0o120777u32 << 16).to_le_bytes();
        let device = (0o020644u32 << 16).to_le_bytes();
        let at = bytes.windows(4).position(|w| w == link).expect("link mode");
        bytes[at..at + 4].copy_from_slice(&device);
    }
    bytes
}

enum ZipKind {
    File(&'static str),
    Dir,
    Symlink(&'static str),
    Device(&'static str),
}

struct Sandbox {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    out: PathBuf,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let out = base.join("out");
        fs::create_dir(&out).unwrap();
        Self {
            _tmp: tmp,
            base,
            out,
        }
    }

    fn extract(&self, name: &str, bytes: &[u8]) -> anyhow::Result<usize> {
        let archive = self.base.join("archives").join(name);
        fs::create_dir_all(archive.parent().unwrap()).unwrap();
        fs::write(&archive, bytes).unwrap();
        extract(&archive, ArchiveKind::from_name(name).unwrap(), &self.out)
    }

    /// Extracting fails naming `entry` and `why`, and nothing exists in the
    /// base folder except `out` and the archive.
    fn refuses(&self, name: &str, bytes: &[u8], entry: &str, why: &str) {
        let err = format!("{:#}", self.extract(name, bytes).unwrap_err());
        assert!(
            err.contains(&format!("refusing archive entry `{entry}`")),
            "{err}"
        );
        assert!(err.contains(why), "{err}");
        let mut beside: Vec<String> = fs::read_dir(&self.base)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        beside.sort();
        assert_eq!(beside, ["archives", "out"], "something was written outside");
        assert!(
            !self.base.join("evil").exists() && !self.out.join("evil").is_symlink(),
            "the attack landed"
        );
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

#[test]
fn suffixes_choose_the_format() {
    assert_eq!(ArchiveKind::from_name("m.ZIP"), Some(ArchiveKind::Zip));
    assert_eq!(ArchiveKind::from_name("m.tar"), Some(ArchiveKind::Tar));
    assert_eq!(ArchiveKind::from_name("m.tar.gz"), Some(ArchiveKind::TarGz));
    assert_eq!(ArchiveKind::from_name("m.tgz"), Some(ArchiveKind::TarGz));
    assert_eq!(
        ArchiveKind::from_name("m.tar.zst"),
        Some(ArchiveKind::TarZst)
    );
    assert_eq!(ArchiveKind::from_name("m.gguf"), None);
    assert_eq!(ArchiveKind::from_name("m.gz"), None);
}

#[test]
fn a_benign_tar_extracts_files_folders_and_links_inside() {
    let tar = RawTar::new()
        .dir("./")
        .dir("model/")
        .file("model/config.json", "{}")
        .file("./model/weights.bin", "w")
        .symlink("model/latest.bin", "weights.bin")
        .symlink("top", "model")
        .hardlink("model/copy.bin", "model/weights.bin")
        .bytes();
    let sandbox = Sandbox::new();
    assert_eq!(sandbox.extract("m.tar", &tar).unwrap(), 5);
    let out = &sandbox.out;
    assert_eq!(read(&out.join("model/config.json")), "{}");
    assert_eq!(read(&out.join("model/latest.bin")), "w");
    assert_eq!(read(&out.join("model/copy.bin")), "w");
    assert_eq!(read(&out.join("top/config.json")), "{}");
    assert!(out.join("top").is_symlink());
}

#[test]
fn gzip_and_zstd_tars_extract() {
    let tar = RawTar::new().file("a.txt", "gz and zst").bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let sandbox = Sandbox::new();
    sandbox.extract("m.tar.gz", &gz.finish().unwrap()).unwrap();
    assert_eq!(read(&sandbox.out.join("a.txt")), "gz and zst");
    let sandbox = Sandbox::new();
    sandbox
        .extract("m.tar.zst", &zstd::encode_all(&tar[..], 1).unwrap())
        .unwrap();
    assert_eq!(read(&sandbox.out.join("a.txt")), "gz and zst");
}

#[test]
fn tar_absolute_paths_are_refused() {
    let sandbox = Sandbox::new();
    let target = sandbox.base.join("evil");
    let name = target.to_str().unwrap();
    let tar = RawTar::new().file(name, "pwned").bytes();
    sandbox.refuses("m.tar", &tar, name, "absolute path");
}

#[test]
fn tar_parent_components_are_refused() {
    for name in ["../evil", "a/../../evil", "./../evil"] {
        let sandbox = Sandbox::new();
        let tar = RawTar::new()
            .file("ok.txt", "ok")
            .file(name, "pwned")
            .bytes();
        sandbox.refuses("m.tar", &tar, name, "`..` component");
    }
}

#[test]
fn tar_symlinks_pointing_outside_are_refused() {
    for target in ["..", "../evil", "a/../../evil", "/etc"] {
        let sandbox = Sandbox::new();
        let tar = RawTar::new().symlink("evil", target).bytes();
        sandbox.refuses("m.tar", &tar, "evil", "points outside the output folder");
    }
}

#[test]
fn tar_entries_written_through_a_symlink_are_refused() {
    // The link itself points inside; the file below it would follow it.
    let sandbox = Sandbox::new();
    let tar = RawTar::new()
        .dir("sub/")
        .symlink("link", "sub")
        .file("link/evil", "pwned")
        .bytes();
    sandbox.refuses(
        "m.tar",
        &tar,
        "link/evil",
        "through the symbolic link `link`",
    );
    assert!(!sandbox.out.join("sub/evil").exists());

    // A link whose lexical target is inside but walks through a link to
    // the root and then up: `s -> .`, `evil -> s/..`.
    let sandbox = Sandbox::new();
    let tar = RawTar::new()
        .symlink("s", ".")
        .symlink("evil", "s/..")
        .bytes();
    sandbox.refuses(
        "m.tar",
        &tar,
        "evil",
        "passes through the symbolic link `s`",
    );

    // A link below a link listed after it: `a/b/c -> ../..` makes `a/b/c`
    // the root, so `a/b/c/evil -> ../../x` would leave it.
    let sandbox = Sandbox::new();
    let tar = RawTar::new()
        .symlink("a/b/c/evil", "../../x")
        .symlink("a/b/c", "../..")
        .bytes();
    sandbox.refuses(
        "m.tar",
        &tar,
        "a/b/c/evil",
        "through the symbolic link `a/b/c`",
    );
}

#[test]
fn tar_hardlinks_pointing_outside_are_refused() {
    let sandbox = Sandbox::new();
    let tar = RawTar::new().hardlink("evil", "../outside.txt").bytes();
    sandbox.refuses("m.tar", &tar, "evil", "hard link points outside");

    let sandbox = Sandbox::new();
    let tar = RawTar::new().hardlink("evil", "/etc/passwd").bytes();
    sandbox.refuses("m.tar", &tar, "evil", "hard link points outside");

    // A name that is inside but not a file of this archive (it could be a
    // link planted by an earlier entry).
    let sandbox = Sandbox::new();
    let tar = RawTar::new()
        .symlink("planted", "x")
        .hardlink("evil", "planted")
        .bytes();
    sandbox.refuses(
        "m.tar",
        &tar,
        "evil",
        "not a regular file extracted before it",
    );
}

#[test]
fn tar_device_files_and_fifos_are_refused() {
    let sandbox = Sandbox::new();
    let tar = RawTar::new()
        .entry("evil", tar::EntryType::Char, "", b"")
        .bytes();
    sandbox.refuses("m.tar", &tar, "evil", "character device");

    let sandbox = Sandbox::new();
    let tar = RawTar::new()
        .entry("evil", tar::EntryType::Block, "", b"")
        .bytes();
    sandbox.refuses("m.tar", &tar, "evil", "block device");

    let sandbox = Sandbox::new();
    let tar = RawTar::new()
        .entry("evil", tar::EntryType::Fifo, "", b"")
        .bytes();
    sandbox.refuses("m.tar", &tar, "evil", "FIFO");
}

#[test]
fn a_benign_zip_extracts_files_folders_and_links_inside() {
    let zip = zip_bytes(&[
        ("model/", ZipKind::Dir),
        ("model/config.json", ZipKind::File("{}")),
        ("model/tokenizer.json", ZipKind::File("t")),
        ("model/alias.json", ZipKind::Symlink("config.json")),
    ]);
    let sandbox = Sandbox::new();
    assert_eq!(sandbox.extract("m.zip", &zip).unwrap(), 3);
    assert_eq!(read(&sandbox.out.join("model/config.json")), "{}");
    assert_eq!(read(&sandbox.out.join("model/alias.json")), "{}");
    assert!(sandbox.out.join("model/alias.json").is_symlink());
}

#[test]
fn zip_absolute_paths_and_parent_components_are_refused() {
    let sandbox = Sandbox::new();
    let target = sandbox.base.join("evil");
    let name = target.to_str().unwrap().to_string();
    let zip = zip_bytes(&[(name.as_str(), ZipKind::File("pwned"))]);
    sandbox.refuses("m.zip", &zip, &name, "absolute path");

    for name in ["../evil", "a/../../evil", "a\\..\\..\\evil"] {
        let sandbox = Sandbox::new();
        let zip = zip_bytes(&[("ok", ZipKind::File("ok")), (name, ZipKind::File("pwned"))]);
        sandbox.refuses("m.zip", &zip, name, "`..` component");
    }
}

#[test]
fn zip_symlinks_pointing_outside_or_walked_through_are_refused() {
    for target in ["..", "../evil", "/etc"] {
        let sandbox = Sandbox::new();
        let zip = zip_bytes(&[("evil", ZipKind::Symlink(target))]);
        sandbox.refuses("m.zip", &zip, "evil", "points outside the output folder");
    }
    let sandbox = Sandbox::new();
    let zip = zip_bytes(&[
        ("sub/", ZipKind::Dir),
        ("link", ZipKind::Symlink("sub")),
        ("link/evil", ZipKind::File("pwned")),
    ]);
    sandbox.refuses(
        "m.zip",
        &zip,
        "link/evil",
        "through the symbolic link `link`",
    );
}

#[test]
fn zip_device_files_are_refused() {
    let sandbox = Sandbox::new();
    let zip = zip_bytes(&[("evil", ZipKind::Device("x"))]);
    sandbox.refuses("m.zip", &zip, "evil", "character device");
}

#[test]
fn relative_paths_are_normalized_or_refused() {
    assert_eq!(
        relative_path("./a//b/").unwrap(),
        Some(PathBuf::from("a/b"))
    );
    assert_eq!(relative_path("./").unwrap(), None);
    assert!(relative_path("C:/x").is_err());
    assert!(relative_path("\\x").is_err());
    assert!(relative_path("a/..").is_err());
}
