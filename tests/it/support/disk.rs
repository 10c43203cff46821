//! Real disk faults for the store: a full filesystem (a small tmpfs, filled: `ENOSPC`, which
//! SQLite reports as `SQLITE_FULL`) and a store whose files cannot be written (`chattr +i`:
//! `EPERM` on every write, even through descriptors already open and even for root, which a
//! `chmod` cannot do; a read-only remount is refused while a file is open for writing). Both need root's capabilities (`CAP_SYS_ADMIN`, `CAP_LINUX_IMMUTABLE`), which
//! the project's machines have. Where they are missing the test says so on stderr and skips,
//! unless `XGATE_REQUIRE_DISK_FAULTS` is set (`.ci/run` sets it): then it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cmd args…`; `Err` with its stderr when it fails.
fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `None` (skip) or a panic (CI), for a fault this machine cannot make.
fn unavailable<T>(what: &str, why: &str) -> Option<T> {
    assert!(
        std::env::var_os("XGATE_REQUIRE_DISK_FAULTS").is_none(),
        "{what} is required here (XGATE_REQUIRE_DISK_FAULTS) but failed: {why}"
    );
    eprintln!("skipped: {what} needs root's capabilities here: {why}");
    None
}

/// A tmpfs of a fixed size on a scratch directory, unmounted when dropped.
#[derive(Debug)]
pub struct SmallDisk {
    pub dir: PathBuf,
}

impl SmallDisk {
    pub fn mount(name: &str, size_kib: u32) -> Option<Self> {
        let dir = super::scratch(name);
        let opts = format!("size={size_kib}k,mode=0700");
        match run("mount", &["-t", "tmpfs", "-o", &opts, "tmpfs", path(&dir)]) {
            Ok(()) => Some(Self { dir }),
            Err(why) => unavailable("a tmpfs mount", &why),
        }
    }

    /// Fills the disk to the last byte with a filler file.
    pub fn fill(&self) {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.dir.join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        // Bounded: the disk is small, and a write past its end fails.
        for _ in 0..1_000_000 {
            if f.write_all(&chunk).and_then(|()| f.sync_all()).is_err() {
                return;
            }
        }
        panic!("the disk never filled up");
    }

    /// Frees what [`SmallDisk::fill`] took.
    pub fn free(&self) {
        std::fs::remove_file(self.dir.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _unmounted = run("umount", &["-l", path(&self.dir)]);
    }
}

/// Makes a store's files impossible to write (`chattr +i`) until dropped: the directory
/// (nothing can be created in it), the database and its `-wal`. Not the `-shm` file: SQLite
/// maps it into memory, and a mapped page of an immutable file is a SIGBUS on the next
/// write, which no real failing disk does to a file already open.
#[derive(Debug)]
pub struct Frozen {
    paths: Vec<String>,
}

impl Frozen {
    pub fn freeze(dir: &Path) -> Option<Self> {
        let mut paths = vec![path(dir).to_owned()];
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if !path(&p).ends_with("-shm") {
                paths.push(path(&p).to_owned());
            }
        }
        let mut args = vec!["+i"];
        args.extend(paths.iter().map(String::as_str));
        match run("chattr", &args) {
            Ok(()) => Some(Self { paths }),
            Err(why) => unavailable("chattr +i", &why),
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let mut args = vec!["-i"];
        args.extend(self.paths.iter().map(String::as_str));
        let thawed = run("chattr", &args);
        if !std::thread::panicking() {
            thawed.unwrap();
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
