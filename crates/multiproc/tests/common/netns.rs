//! Two "hosts" on one machine, for tests of work that crosses a network: two network
//! namespaces joined by a veth pair (10.99.0.1 and 10.99.0.2, which exist only inside
//! them), each with its own host name when a command runs through [`TwoHosts::run_in`]
//! or the ssh stand-in [`TwoHosts::agent`]. Needs root, `ip` (iproute2) and `unshare`.

use std::path::PathBuf;
use std::process::Command;

/// Two network namespaces joined by a veth pair, with addresses that exist only inside
/// them: two "hosts" on one machine. Deleted on drop.
pub struct TwoHosts {
    pub names: [String; 2],
    dir: PathBuf,
}

impl TwoHosts {
    pub const ADDRS: [&str; 2] = ["10.99.0.1", "10.99.0.2"];

    pub fn create() -> Result<TwoHosts, String> {
        // Unique per pair: tests of one process may make pairs at the same time.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}x{n}", std::process::id());
        let names = [format!("mpa{id}"), format!("mpb{id}")];
        let dir = std::env::temp_dir().join(format!("multiproc-netns-{id}"));
        let hosts = TwoHosts { names, dir };
        let [a, b] = &hosts.names;
        let (va, vb) = (format!("va{id}"), format!("vb{id}"));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
            vec!["link", "set", &va, "netns", a],
            vec!["link", "set", &vb, "netns", b],
            vec!["-n", a, "addr", "add", "10.99.0.1/24", "dev", &va],
            vec!["-n", b, "addr", "add", "10.99.0.2/24", "dev", &vb],
            vec!["-n", a, "link", "set", &va, "up"],
            vec!["-n", b, "link", "set", &vb, "up"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = Command::new("ip")
                .args(&step)
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "ip {step:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        // Stands in for ssh: runs the daemon's command in that host's namespace, with
        // that host's name.
        std::fs::create_dir_all(&hosts.dir).map_err(|e| e.to_string())?;
        let agent = format!(
            "#!/bin/sh\nhost=$1; shift\ncase \"$host\" in\n  {}) ns={a} ;;\n  {}) ns={b} ;;\n  \
             *) echo \"unknown host $host\" >&2; exit 1 ;;\nesac\n\
             exec ip netns exec \"$ns\" unshare --uts sh -c \"hostname $ns; $*\"\n",
            Self::ADDRS[0],
            Self::ADDRS[1]
        );
        std::fs::write(hosts.agent(), agent).map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(hosts.agent(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        Ok(hosts)
    }

    pub fn agent(&self) -> PathBuf {
        self.dir.join("agent.sh")
    }
}

impl TwoHosts {
    /// The two hosts, or `None` (with a SKIPPED note on stderr) where they cannot be
    /// made: not root, no `ip` or `unshare`, or namespaces refused.
    pub fn try_create() -> Option<TwoHosts> {
        let tools = Command::new("sh")
            .args([
                "-c",
                "[ \"$(id -u)\" = 0 ] && command -v ip && command -v unshare",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if !tools {
            eprintln!("SKIPPED: needs root, `ip` (iproute2) and `unshare` to make two hosts");
            return None;
        }
        match TwoHosts::create() {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("SKIPPED: cannot create network namespaces here: {e}");
                None
            }
        }
    }

    /// A command that runs `program` on host `i` (0 or 1): in its namespace, under its
    /// host name.
    pub fn run_in(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.names[i],
            "unshare",
            "--uts",
            "sh",
            "-c",
        ])
        .arg(format!("hostname {} && exec \"$0\" \"$@\"", self.names[i]))
        .arg(program);
        c
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for n in &self.names {
            // Deleting a namespace deletes the veth end inside it, and so the pair.
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
