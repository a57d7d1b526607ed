//! A lock that holds across the machines sharing a filesystem (the nodes of
//! a cluster with the store on NFS), for a stage that Slurm jobs of two runs
//! could compute at once.
//!
//! `flock` does not do: on NFS it is either local to each client or mapped
//! onto NFS byte-range locks, depending on the kernel and mount options, and
//! a lock held by a node that died is not reliably released. What NFS does
//! guarantee is that creating a directory is atomic: of two `mkdir` calls for
//! one name, exactly one succeeds, on every protocol version. So the lock is
//! a directory. Its holder refreshes a heartbeat file inside it; a lock
//! whose heartbeat is older than `stale_after` (its holder died with its
//! node) is broken by renaming it aside. Breaking takes a guard of its own
//! (another directory) and looks again under it, so that two waiters never
//! both break, and never break the lock a third process has just taken.
//! The holder's `owner` file carries a token unique to it, and a holder
//! removes the lock on release only while the token there is still its own.
//! Ages are measured in the filesystem's own clock (the mtime of a file just
//! written next to it), so nodes whose clocks disagree still agree on them.
//! On the holder's own machine a holder whose process is gone is stale at
//! once.

use crate::fsutil::{host_name, unique_name};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

/// Held until dropped; the heartbeat runs meanwhile.
pub struct SharedLock {
    path: PathBuf,
    /// What `owner` says while this holder has the lock.
    token: String,
    stop: Arc<AtomicBool>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A heartbeat older than this means the holder is gone.
    pub stale_after: Duration,
    /// How often the holder refreshes its heartbeat.
    pub heartbeat: Duration,
    /// How often a waiter looks again.
    pub poll: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            stale_after: Duration::from_secs(120),
            heartbeat: Duration::from_secs(15),
            poll: Duration::from_millis(500),
        }
    }
}

const OWNER: &str = "owner";
const HEARTBEAT: &str = "heartbeat";

impl SharedLock {
    /// Waits until the lock at `path` (a directory name) is free, then takes it.
    pub fn acquire(path: &Path, timing: Timing) -> io::Result<Self> {
        loop {
            match fs::create_dir(path) {
                Ok(()) => return Self::hold(path, timing),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if is_stale(path, timing.stale_after)? && break_if_stale(path, timing)? {
                continue;
            }
            std::thread::sleep(timing.poll);
        }
    }

    fn hold(path: &Path, timing: Timing) -> io::Result<Self> {
        let token = format!("{} {} {}", host_name(), std::process::id(), unique_name());
        fs::write(path.join(OWNER), format!("{token}\n"))?;
        fs::write(path.join(HEARTBEAT), b"")?;
        let stop = Arc::new(AtomicBool::new(false));
        let beat_path = path.join(HEARTBEAT);
        let beat_stop = stop.clone();
        let heartbeat = std::thread::Builder::new()
            .name("distillery-lock-heartbeat".into())
            .spawn(move || {
                let step = Duration::from_millis(50).min(timing.heartbeat);
                let mut waited = Duration::ZERO;
                while !beat_stop.load(Ordering::SeqCst) {
                    std::thread::sleep(step);
                    waited += step;
                    if waited >= timing.heartbeat {
                        waited = Duration::ZERO;
                        let _ = fs::write(&beat_path, b"");
                    }
                }
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            token,
            stop,
            heartbeat: Some(heartbeat),
        })
    }
}

impl Drop for SharedLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        // Only while the lock is still ours: had it been broken (this
        // holder stalled past `stale_after`), it may be someone else's now.
        if owner_token(&self.path).as_deref() == Some(self.token.as_str()) {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn owner_token(path: &Path) -> Option<String> {
    fs::read_to_string(path.join(OWNER))
        .ok()
        .map(|t| t.trim().to_string())
}

/// Whether the lock's holder is gone: its process ended (same machine), or
/// its heartbeat is older than `stale_after` in the filesystem's clock. A
/// lock being created or removed right now is not stale.
fn is_stale(path: &Path, stale_after: Duration) -> io::Result<bool> {
    if let Some(owner) = owner_token(path)
        && let Some((host, rest)) = owner.split_once(' ')
        && let Some(pid) = rest.split(' ').next()
        && host == host_name()
        && pid.parse::<u32>().is_ok()
        && !Path::new("/proc").join(pid).exists()
        && Path::new("/proc/self").exists()
    {
        return Ok(true);
    }
    let beat = match fs::metadata(path.join(HEARTBEAT)).or_else(|_| fs::metadata(path)) {
        Ok(m) => m.modified()?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let now = filesystem_now(path.parent().unwrap_or(Path::new(".")))?;
    Ok(now.duration_since(beat).unwrap_or_default() > stale_after)
}

/// Breaks the lock if it is still stale once this waiter holds the break
/// guard (a directory beside it): the lock is moved aside and removed.
/// Returns whether it was broken. A guard left by a waiter that died while
/// breaking is itself broken once older than `stale_after`.
fn break_if_stale(path: &Path, timing: Timing) -> io::Result<bool> {
    let mut guard_name = path.as_os_str().to_owned();
    guard_name.push(".breaking");
    let guard = PathBuf::from(guard_name);
    match fs::create_dir(&guard) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let age = fs::metadata(&guard)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| filesystem_now(path.parent()?).ok()?.duration_since(m).ok());
            if age.is_some_and(|a| a > timing.stale_after) {
                let _ = fs::remove_dir(&guard);
            }
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    let broken = (|| {
        // Under the guard, nobody else breaks; a lock taken anew since the
        // first look has a fresh heartbeat and is left alone.
        if !is_stale(path, timing.stale_after)? {
            return Ok(false);
        }
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".stale.{}", unique_name()));
        match fs::rename(path, &aside) {
            Ok(()) => fs::remove_dir_all(&aside).map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    })();
    let _ = fs::remove_dir(&guard);
    broken
}

/// The current time as the filesystem holding `dir` sees it: the mtime of
/// a file written there now.
fn filesystem_now(dir: &Path) -> io::Result<SystemTime> {
    let probe = dir.join(format!(
        ".clock.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    fs::write(&probe, b"")?;
    let now = fs::metadata(&probe)?.modified();
    let _ = fs::remove_file(&probe);
    now
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn fast() -> Timing {
        Timing {
            stale_after: Duration::from_millis(400),
            heartbeat: Duration::from_millis(50),
            poll: Duration::from_millis(20),
        }
    }

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.lock");
        let inside = Arc::new(Mutex::new(0u32));
        let most = Arc::new(Mutex::new(0u32));
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..5 {
                        let _lock = SharedLock::acquire(&path, fast()).unwrap();
                        let now = {
                            let mut n = inside.lock().unwrap();
                            *n += 1;
                            *n
                        };
                        let mut m = most.lock().unwrap();
                        *m = (*m).max(now);
                        drop(m);
                        std::thread::sleep(Duration::from_millis(5));
                        *inside.lock().unwrap() -= 1;
                    }
                });
            }
        });
        assert_eq!(*most.lock().unwrap(), 1);
        assert!(!path.exists());
    }

    #[test]
    fn a_live_holder_keeps_it_past_the_stale_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.lock");
        let held = SharedLock::acquire(&path, fast()).unwrap();
        std::thread::sleep(Duration::from_millis(800));
        assert!(!is_stale(&path, fast().stale_after).unwrap());
        drop(held);
    }

    #[test]
    fn a_lock_without_heartbeat_from_another_node_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.lock");
        // What a node that died leaves: its owner line and an old heartbeat.
        fs::create_dir(&path).unwrap();
        fs::write(path.join(OWNER), "another-node 12345\n").unwrap();
        fs::write(path.join(HEARTBEAT), b"").unwrap();
        assert!(!is_stale(&path, fast().stale_after).unwrap());
        std::thread::sleep(Duration::from_millis(600));
        let started = std::time::Instant::now();
        let lock = SharedLock::acquire(&path, fast()).unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            fs::read_to_string(path.join(OWNER))
                .unwrap()
                .starts_with(&host_name())
        );
        drop(lock);
    }

    #[test]
    fn a_holder_whose_lock_was_broken_leaves_the_new_holders_lock_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.lock");
        let stalled = SharedLock::acquire(&path, fast()).unwrap();
        // Someone else broke it and took it (as after a stall past the
        // stale age): the first holder's release must not remove theirs.
        fs::remove_dir_all(&path).unwrap();
        let other = SharedLock::acquire(&path, fast()).unwrap();
        drop(stalled);
        assert!(path.exists(), "the new holder's lock was removed");
        assert_eq!(owner_token(&path).as_deref(), Some(other.token.as_str()));
        drop(other);
        assert!(!path.exists());
    }

    #[test]
    fn a_holder_process_that_ended_on_this_machine_is_stale_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.lock");
        fs::create_dir(&path).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        fs::write(path.join(OWNER), format!("{} {pid}\n", host_name())).unwrap();
        fs::write(path.join(HEARTBEAT), b"").unwrap();
        assert!(is_stale(&path, Duration::from_secs(3600)).unwrap());
    }
}
