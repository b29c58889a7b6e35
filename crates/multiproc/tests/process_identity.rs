//! Who a process is: `current_process`, `parent_process`, `cpu_count`, in the test
//! process and inside children of every start method.

use multiproc::{Process, ProcessInfo, StartMethod, cpu_count, current_process, parent_process};

/// `ProcessInfo` is not serde: it travels as `(pid, name)`.
type Info = (u32, String);

fn info(p: ProcessInfo) -> Info {
    (p.pid, p.name)
}

fn who(_: ()) -> (Info, Option<Info>, usize) {
    (
        info(current_process()),
        parent_process().map(info),
        cpu_count(),
    )
}

/// A child starts a grandchild: each level sees its own parent.
fn who_is_my_childs_parent(method_name: String) -> (u32, Option<Info>, String) {
    let method: StartMethod = method_name.parse().unwrap();
    let p = Process::builder()
        .start_method(method)
        .name("grandchild")
        .start(who, ())
        .unwrap();
    let (info, parent, _) = p.join().unwrap();
    (std::process::id(), parent, info.1)
}

#[test]
fn in_the_test_process() {
    let me = current_process();
    assert_eq!(me.pid, std::process::id());
    assert_eq!(me.name, "MainProcess");
    assert_eq!(parent_process(), None);
    assert!(cpu_count() >= 1);
}

#[test]
fn in_a_child() {
    for m in StartMethod::ALL {
        let name = format!("child via {m}");
        let p = Process::builder()
            .start_method(m)
            .name(name.clone())
            .start(who, ())
            .unwrap();
        let pid = p.pid();
        let ((child_pid, child_name), parent, cpus) = p.join().unwrap();
        assert_eq!(child_pid, pid, "{m}");
        assert_eq!(child_name, name, "{m}");
        let parent = parent.unwrap_or_else(|| panic!("{m}: no parent_process in a child"));
        assert_eq!(parent.0, std::process::id(), "{m}");
        assert_eq!(cpus, cpu_count(), "{m}");
    }
}

#[test]
fn default_names_are_distinct() {
    for m in StartMethod::ALL {
        let p = Process::builder().start_method(m).start(who, ()).unwrap();
        let given = p.name().to_owned();
        let ((_, name), _, _) = p.join().unwrap();
        assert_eq!(name, given, "{m}");
        assert!(given.starts_with("Process-"), "{m}: {given}");
    }
}

#[test]
fn in_a_grandchild() {
    for outer in [
        StartMethod::Spawn,
        StartMethod::ForkServer,
        StartMethod::Fork,
    ] {
        for inner in StartMethod::ALL {
            let p = Process::builder()
                .start_method(outer)
                .start(who_is_my_childs_parent, inner.name().to_owned())
                .unwrap();
            let child_pid = p.pid();
            let (reported_pid, grandparent, name) = p.join().unwrap();
            assert_eq!(reported_pid, child_pid, "{outer}/{inner}");
            assert_eq!(
                grandparent.map(|p| p.0),
                Some(child_pid),
                "{outer}/{inner}: the grandchild's parent is the child"
            );
            assert_eq!(name, "grandchild", "{outer}/{inner}");
        }
    }
}
