//! The crate's layering, checked on its own source: the store is the
//! ground floor, and the stages above it import each other without cycles.
//! A newcomer can then read the store (either backend) without the stages,
//! and a stage without the ones that use it.
//!
//! The unit is a top-level module of `src/` (a folder such as `store/`, or
//! a file such as `ingest.rs`); an edge is any `crate::<module>` path in a
//! file, comments left out, tests included (a test's import is an import).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules the store may use: the ones below every stage (time, ids,
/// secrets sealing, signing schemes, retry schedules, the event envelope,
/// the plugin sandbox's types, the NATS connection).
const STORE_MAY_USE: &[&str] = &[
    "clock", "cluster", "event", "retry", "runtime", "secrets", "sign", "util",
];

/// Calls that name a tree or open the database: the store's alone.
const TREE_ACCESS: &[&str] = &[
    "open_tree(",
    "tree_names(",
    "sled::Tree",
    "sled::Db",
    "sled::open",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without its comments (line comments, doc comments included).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string (a URL) is kept: only a comment that
            // starts the line's remaining code is cut.
            Some(i) if line[..i].matches('"').count() % 2 == 0 => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each top-level module of `src/` with the top-level modules it names,
/// and for each edge a file that makes it.
fn graph() -> BTreeMap<String, BTreeMap<String, String>> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| unit(&root, f))
        .filter(|m| !["lib", "main"].contains(&m.as_str()))
        .collect();
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in &files {
        let from = unit(&root, file);
        let text = code(&std::fs::read_to_string(file).unwrap());
        let edges = graph.entry(from.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            for name in named(&text[i + "crate::".len()..]) {
                if name != from && modules.contains(&name) {
                    let shown = file.strip_prefix(&root).unwrap().display().to_string();
                    edges.entry(name).or_insert(shown);
                }
            }
        }
    }
    graph
}

/// The top-level modules a path after `crate::` names: one (`store::X`)
/// or, for a group (`{deliver, ingest::Y}`), each of its items.
fn named(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = rest.strip_prefix('{') else {
        return vec![ident(rest)];
    };
    let mut names = Vec::new();
    let mut depth = 0;
    let mut item_start = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                names.push(ident(&group[item_start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                names.push(ident(&group[item_start..i]));
                item_start = i + 1;
            }
            _ => {}
        }
    }
    names
}

/// `store/cluster/log.rs` → `store`; `ingest.rs` → `ingest`.
fn unit(root: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(root).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_string()
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flat_map(|e| e.keys()) {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w.as_str()]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w.as_str()) {
                    let low = self.low[v].min(self.index[w.as_str()]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn no_two_modules_import_each_other_through_any_path() {
    let graph = graph();
    let found = cycles(&graph);
    let explain: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    graph[a]
                        .iter()
                        .filter(|(b, _)| c.contains(b))
                        .map(move |(b, file)| format!("{a} -> {b} ({file})"))
                })
                .collect();
            format!("{c:?}: {}", edges.join(", "))
        })
        .collect();
    assert!(found.is_empty(), "import cycles:\n{}", explain.join("\n"));
}

#[test]
fn the_store_imports_nothing_above_it() {
    let graph = graph();
    let above: Vec<String> = graph["store"]
        .iter()
        .filter(|(m, _)| !STORE_MAY_USE.contains(&m.as_str()))
        .map(|(m, file)| format!("{m} ({file})"))
        .collect();
    assert!(above.is_empty(), "the store imports {above:?}");
}

#[test]
fn only_the_store_names_its_trees() {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&root).unwrap();
        if relative.starts_with("store") || relative == Path::new("layers.rs") {
            continue;
        }
        let text = code(&std::fs::read_to_string(&file).unwrap());
        for call in TREE_ACCESS {
            if text.contains(call) {
                found.push(format!("{} uses {call}", relative.display()));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// The checks above would pass on a source they could not read: they must
/// see the edges that exist.
#[test]
fn the_checks_see_the_crates_real_imports() {
    let graph = graph();
    assert!(graph["ingest"].contains_key("store"));
    assert!(graph["store"].contains_key("cluster"));
    // A group import names each of its items.
    assert!(graph["api"].contains_key("deliver") && graph["api"].contains_key("ingest"));
    assert_eq!(
        named("{deliver, ingest::{A, B}, store}"),
        ["deliver", "ingest", "store"]
    );
    let mut with_cycle = graph.clone();
    with_cycle
        .get_mut("store")
        .unwrap()
        .insert("ingest".into(), "made up".into());
    assert_eq!(cycles(&with_cycle).len(), 1);
}
