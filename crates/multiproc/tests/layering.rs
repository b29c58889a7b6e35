//! The library's files import one another one way, and its lower layers import nothing
//! from higher ones (issue 20, item 1).
//!
//! The graph: one node per file of `src/`, an edge from a file to the file of every
//! module it names by a `crate::…`, `super::…` or `self::…` path (the longest prefix of
//! the path that is a module; `use super::{a, b}` names each item). Comment lines,
//! a trailing `#[cfg(test)] mod tests { … }` and the test files under `tests/`
//! folders do not count: tests may reach anywhere. `mod x;` and `use x::…` without a
//! prefix do not count either, so a folder's `mod.rs` may use its children freely;
//! a child that imports its `mod.rs` for a type the `mod.rs` also uses to call it
//! closes a cycle only if the `mod.rs` names the child by a prefixed path.
//!
//! The rules:
//! - no cycle between files: two files that need each other share something that
//!   belongs in a third file both import;
//! - `sys/` (the unsafe floor) imports only `sys/` and `error.rs`;
//! - `wire/` imports only `wire/`, `sys/` and `error.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

/// Cycles let through: none. (A cycle is let through if every file in it matches one
/// group; an entry ending in `/` matches the files under that folder.) Keep it empty:
/// a cycle is broken by moving what both files need into a third that both import.
const ALLOWED_CYCLES: &[&[&str]] = &[];

/// What each lower layer may import: files under the folder may name only files under
/// these folders (ending in `/`) or these files.
const LAYERS: &[(&str, &[&str])] = &[
    ("sys/", &["sys/", "error.rs"]),
    ("wire/", &["wire/", "sys/", "error.rs"]),
];

/// Where a file names another: its line (1-based) and the path as written.
#[derive(Clone, Debug)]
struct Naming {
    line: usize,
    path: String,
}

/// The files of `src/`, by path relative to it (`pool/core/mod.rs`), with their text.
struct Tree {
    files: BTreeMap<String, String>,
    /// Module path (`["pool", "core"]`) to its file.
    modules: BTreeMap<Vec<String>, String>,
}

/// Edges from a file to the files it names, with where it first names each.
type Graph = BTreeMap<String, BTreeMap<String, Naming>>;

fn read_tree(root: &Path) -> Tree {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}"));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let rel = path.strip_prefix(root).expect("under src/");
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
                out.insert(rel.join("/"), text);
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    let modules = files.keys().map(|p| (module_path(p), p.clone())).collect();
    Tree { files, modules }
}

/// `pool/core/mod.rs` -> `["pool", "core"]`; `lib.rs` -> `[]`.
fn module_path(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file
        .strip_suffix(".rs")
        .unwrap_or(file)
        .split('/')
        .map(str::to_owned)
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

impl Tree {
    /// The file of the longest prefix of `path` that is a module (`lib.rs` at least).
    fn resolve(&self, path: &[String]) -> Option<&str> {
        (0..=path.len())
            .rev()
            .find_map(|k| self.modules.get(&path[..k]))
            .map(String::as_str)
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The text that counts: from the first `#[cfg(test)] mod tests {` on, nothing; comment
/// lines blanked (kept as empty lines, so that line numbers stay true).
fn code_of(src: &str) -> String {
    let mut end = src.len();
    let mut from = 0;
    while let Some(at) = src[from..].find("#[cfg(test)]") {
        let at = from + at;
        let after = src[at + "#[cfg(test)]".len()..].trim_start();
        if after.starts_with("mod tests {") {
            end = at;
            break;
        }
        from = at + 1;
    }
    src[..end]
        .split('\n')
        .map(|l| if l.trim().starts_with("//") { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b`, `super::a`, `self::a` path in `code` (at a word start, as
/// many `::ident` segments as follow): (byte offset, base, segments).
fn prefixed_paths(code: &str) -> Vec<(usize, &str, Vec<&str>)> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < code.len() {
        // Every base starts with `c` or `s`: skip the other bytes at once (`i` may
        // then fall inside a UTF-8 sequence, so slice only at those two ASCII bytes).
        if !matches!(bytes[i], b'c' | b's') {
            i += 1;
            continue;
        }
        let base = ["crate", "super", "self"]
            .into_iter()
            .find(|b| code[i..].starts_with(*b));
        let at_word_start = code[..i].chars().next_back().is_none_or(|c| !is_word(c));
        let Some(base) = base.filter(|_| at_word_start) else {
            i += 1;
            continue;
        };
        let mut j = i + base.len();
        let mut segments = Vec::new();
        while code[j..].starts_with("::")
            && bytes
                .get(j + 2)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
        {
            let start = j + 2;
            let mut end = start + 1;
            while bytes
                .get(end)
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
            {
                end += 1;
            }
            segments.push(&code[start..end]);
            j = end;
        }
        if segments.is_empty() {
            i += 1;
        } else {
            out.push((i, base, segments));
            i = j;
        }
    }
    out
}

/// Every `use crate::{…}` and `use super::{…}` list in `code` (up to the first `}`):
/// (byte offset, base, the text between the braces).
fn use_lists(code: &str) -> Vec<(usize, &str, &str)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = code[i..].find("use ") {
        let at = i + at;
        let rest = &code[at + 4..];
        let base = ["crate", "super"]
            .into_iter()
            .find(|b| rest.starts_with(*b) && rest[b.len()..].starts_with("::{"));
        let list = base.and_then(|b| {
            let open = at + 4 + b.len() + 3;
            code[open..].find('}').map(|close| (b, open, open + close))
        });
        match list {
            Some((b, open, close)) => {
                out.push((at, b, &code[open..close]));
                i = close + 1;
            }
            None => i = at + 1,
        }
    }
    out
}

fn build_graph(tree: &Tree) -> Graph {
    let mut graph = Graph::new();
    for (file, src) in &tree.files {
        let edges = graph.entry(file.clone()).or_default();
        if file.starts_with("tests/") || file.contains("/tests/") || file.ends_with("tests.rs") {
            continue;
        }
        let code = code_of(src);
        let line_of = |offset: usize| code[..offset].matches('\n').count() + 1;
        let me = module_path(file);
        let parent = &me[..me.len().saturating_sub(1)];
        let mut add = |path: Vec<String>, offset: usize, written: String| {
            if let Some(target) = tree.resolve(&path).filter(|t| *t != file.as_str()) {
                edges.entry(target.to_owned()).or_insert(Naming {
                    line: line_of(offset),
                    path: written,
                });
            }
        };
        for (offset, base, segments) in prefixed_paths(&code) {
            let written = format!("{base}::{}", segments.join("::"));
            let segments: Vec<String> = segments.into_iter().map(str::to_owned).collect();
            let path = match base {
                "crate" => segments,
                "self" => [me.clone(), segments].concat(),
                _ => {
                    let mut cur = parent.to_vec();
                    let mut rest = &segments[..];
                    while let [first, tail @ ..] = rest {
                        if first != "super" {
                            break;
                        }
                        cur.pop();
                        rest = tail;
                    }
                    [cur, rest.to_vec()].concat()
                }
            };
            add(path, offset, written);
        }
        for (offset, base, list) in use_lists(&code) {
            for item in list.split(',') {
                let item: Vec<String> = item.trim().split("::").map(str::to_owned).collect();
                if item[0].is_empty() || item[0] == "self" {
                    continue;
                }
                let written = format!("{base}::{{{}}}", item.join("::"));
                let path = match base {
                    "crate" => item,
                    _ => [parent.to_vec(), item].concat(),
                };
                add(path, offset, written);
            }
        }
    }
    graph
}

/// The strongly connected components of more than one file (Tarjan's algorithm,
/// iterative), each sorted.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let names: Vec<&String> = graph.keys().collect();
    let index_of: BTreeMap<&String, usize> =
        names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let succ: Vec<Vec<usize>> = names
        .iter()
        .map(|n| {
            graph[*n]
                .keys()
                .filter_map(|t| index_of.get(t).copied())
                .collect()
        })
        .collect();
    let n = names.len();
    let (mut index, mut low) = (vec![usize::MAX; n], vec![0; n]);
    let mut on_stack = vec![false; n];
    let (mut stack, mut next, mut out) = (Vec::new(), 0, Vec::new());
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        // (node, next successor to look at)
        let mut calls = vec![(root, 0)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(top) = calls.last_mut() {
            let v = top.0;
            if let Some(&w) = succ[v].get(top.1) {
                top.1 += 1;
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(u, _)) = calls.last() {
                low[u] = low[u].min(low[v]);
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    comp.push(names[w].clone());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    out.push(comp);
                }
            }
        }
    }
    out.sort();
    out
}

fn matches_entry(file: &str, entry: &str) -> bool {
    if entry.ends_with('/') {
        file.starts_with(entry)
    } else {
        file == entry
    }
}

/// The graph of `src/`, read once for all the tests here.
fn src_graph() -> &'static Graph {
    static GRAPH: OnceLock<Graph> = OnceLock::new();
    GRAPH.get_or_init(read_src_graph)
}

fn read_src_graph() -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tree = read_tree(&root);
    assert!(
        tree.files.contains_key("lib.rs") && tree.files.len() > 20,
        "no library sources under {root:?}"
    );
    build_graph(&tree)
}

#[test]
fn no_import_cycles_between_files() {
    let graph = src_graph();
    let mut report = String::new();
    for comp in cycles(graph) {
        let allowed = ALLOWED_CYCLES.iter().any(|group| {
            comp.iter()
                .all(|f| group.iter().any(|e| matches_entry(f, e)))
        });
        if allowed {
            continue;
        }
        report += &format!("\n  {}\n", comp.join(", "));
        for from in &comp {
            for (to, naming) in &graph[from] {
                if comp.contains(to) {
                    report += &format!(
                        "    {from}:{} names {to} (`{}`)\n",
                        naming.line, naming.path
                    );
                }
            }
        }
    }
    assert!(
        report.is_empty(),
        "import cycles between files of crates/multiproc/src (each file below reaches \
         the others through these `crate::`/`super::`/`self::` paths):\n{report}\n\
         Move what the files share (a state struct, a type, constants) into a file of \
         its own that they import, so that imports go one way; a child must not import \
         its folder's mod.rs for something the mod.rs uses it for."
    );
}

#[test]
fn lower_layers_import_nothing_from_higher_ones() {
    let graph = src_graph();
    let mut report = String::new();
    for (from, edges) in graph {
        let Some((layer, may)) = LAYERS.iter().find(|(l, _)| from.starts_with(*l)) else {
            continue;
        };
        for (to, naming) in edges {
            if !may.iter().any(|e| matches_entry(to, e)) {
                report += &format!(
                    "  {from}:{} names {to} (`{}`): {layer} may import only {}\n",
                    naming.line,
                    naming.path,
                    may.join(", ")
                );
            }
        }
    }
    assert!(
        report.is_empty(),
        "lower layers of crates/multiproc/src import from higher ones:\n{report}\
         Move the code that needs the higher layer up into it, or pass what the lower \
         layer needs in as an argument (a path that names only the crate root, such as \
         `crate::Error`, counts as lib.rs: name `crate::error::Error`)."
    );
}

#[test]
fn paths_are_read_as_the_rules_say() {
    let code = code_of(
        "use super::{a, b::C, self};\n// crate::commented\nlet x = crate::wire::frame::f();\n\
         use super::super::up;\n#[cfg(test)]\nmod tests {\n    use crate::pool;\n}\n",
    );
    let paths: Vec<String> = prefixed_paths(&code)
        .into_iter()
        .map(|(_, b, s)| format!("{b}::{}", s.join("::")))
        .collect();
    assert_eq!(paths, ["crate::wire::frame::f", "super::super::up"]);
    let lists: Vec<&str> = use_lists(&code).into_iter().map(|(_, _, l)| l).collect();
    assert_eq!(lists, ["a, b::C, self"]);
}
