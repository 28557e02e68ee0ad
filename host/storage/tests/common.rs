//! Helpers shared by the integration tests: scratch directories on the same disk
//! as the build (never /tmp, which may be tmpfs and would make fsync free).

#![allow(dead_code)]

use std::path::PathBuf;

/// A fresh, empty directory under the target dir, removed on drop unless the
/// test failed (kept for inspection then).
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("waft-storage")
            .join(format!("{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        Scratch { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
