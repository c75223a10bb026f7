//! `wasmhook plugin new`: a working plugin project in Rust, JavaScript or
//! Python, built by `make` into `plugin.wasm`.
//!
//! Every file is compiled into the binary, so the scaffold works wherever the
//! binary does, and matches its WIT exactly. The JavaScript and Python
//! projects carry the shims that map the WIT world to plain functions
//! (`wasmhook.js`, `wasmhook_shim.py`); the Rust project carries a copy of
//! the guest SDK (with its own WIT), so it builds outside this repository.

use std::fmt;
use std::path::{Path, PathBuf};

/// The plugin's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Python,
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Rust => "Rust",
            Lang::Js => "JavaScript",
            Lang::Python => "Python",
        })
    }
}

/// Why no project was created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "{0:?} is not a plugin name: use 1-64 characters a-z, 0-9, '-' and '_', starting with a letter"
    )]
    BadName(String),
    #[error("{} already exists and is not empty; pick a new directory", .0.display())]
    NotEmpty(PathBuf),
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The contract, as this binary knows it.
const WIT: &str = include_str!("../../../wit/plugin.wit");
/// The guest SDK's own copy (identical; a test checks).
const SDK_WIT: &str = include_str!("../../../guest-sdk/wit/plugin.wit");

const EVENT: &str = include_str!("common/event.json");
const CONFIG: &str = include_str!("common/config.json");
const README: &str = include_str!("common/README.md");
const GITIGNORE: &str = include_str!("common/gitignore");

/// One file of a project: its path and its text, with `{{name}}` to fill.
type Template = (&'static str, &'static str);

const JS: &[Template] = &[
    ("plugin.js", include_str!("js/plugin.js")),
    ("wasmhook.js", include_str!("js/wasmhook.js")),
    ("build.mjs", include_str!("js/build.mjs")),
    ("package.json", include_str!("js/package.json")),
    ("Makefile", include_str!("js/Makefile")),
];

const PYTHON: &[Template] = &[
    ("plugin.py", include_str!("python/plugin.py")),
    ("wasmhook_shim.py", include_str!("python/wasmhook_shim.py")),
    ("requirements.txt", include_str!("python/requirements.txt")),
    ("Makefile", include_str!("python/Makefile")),
];

const RUST: &[Template] = &[
    ("Cargo.toml", include_str!("rust/Cargo.toml")),
    ("src/lib.rs", include_str!("rust/lib.rs")),
    ("Makefile", include_str!("rust/Makefile")),
    (
        "wasmhook-guest/Cargo.toml",
        include_str!("rust/sdk-Cargo.toml"),
    ),
    (
        "wasmhook-guest/src/lib.rs",
        include_str!("../../../guest-sdk/src/lib.rs"),
    ),
    (
        "wasmhook-guest/README.md",
        include_str!("../../../guest-sdk/README.md"),
    ),
    ("wasmhook-guest/wit/plugin.wit", SDK_WIT),
];

impl Lang {
    fn templates(self) -> &'static [Template] {
        match self {
            Lang::Rust => RUST,
            Lang::Js => JS,
            Lang::Python => PYTHON,
        }
    }

    /// The README's table rows for the language's own files.
    fn file_rows(self) -> &'static str {
        match self {
            Lang::Rust => {
                "| `src/lib.rs` | the plugin: `handle` (and optionally `flush`) on the `Plugin` trait |\n\
                 | `Cargo.toml` | the crate (a `cdylib` for `wasm32-wasip2`) |\n\
                 | `wasmhook-guest/` | the guest SDK, with its own copy of the WIT |\n"
            }
            Lang::Js => {
                "| `plugin.js` | the plugin: `handle(event, config)`, optional `flush` and `checkConfig` |\n\
                 | `wasmhook.js` | the shim between the WIT world and `plugin.js` (do not edit) |\n\
                 | `build.mjs`, `package.json` | the build, with `@bytecodealliance/componentize-js` |\n"
            }
            Lang::Python => {
                "| `plugin.py` | the plugin: `handle(event, config)`, optional `flush` and `check_config` |\n\
                 | `wasmhook_shim.py` | the shim between the WIT world and `plugin.py` (do not edit) |\n\
                 | `requirements.txt` | the build tool, `componentize-py` (installed into `.venv` by `make`) |\n"
            }
        }
    }

    fn needs(self) -> &'static str {
        match self {
            Lang::Rust => "Rust with `rustup` (the Makefile adds the `wasm32-wasip2` target)",
            Lang::Js => "Node.js 18 or later with npm",
            Lang::Python => "Python 3.10 or later with `venv`",
        }
    }

    fn notes(self) -> &'static str {
        match self {
            Lang::Rust => {
                "\nThe Rust guest is the smallest and fastest (~150 KB, ~12 µs a call); see\n\
                 `wasmhook-guest/README.md` for the SDK's helpers.\n"
            }
            Lang::Js => {
                "\n`plugin.wasm` embeds the SpiderMonkey engine (~12 MB) with the script\n\
                 pre-initialized, so a call costs well under a millisecond. The build turns\n\
                 off every WASI feature: the component imports only `wasmhook:plugin/host`.\n\
                 `console.log` (and `.info`, `.warn`, `.error`) go to the plugin log; `Date`\n\
                 is frozen at the event's time; `Math.random` is deterministic; there is no\n\
                 `fetch` and no timers.\n"
            }
            Lang::Python => {
                "\n`plugin.wasm` embeds CPython (~18 MB) with the modules pre-imported, so a\n\
                 call costs about a millisecond. `print` goes to the plugin log (stderr as\n\
                 warnings), or call `wasmhook_shim.log(\"warn\", ...)`. The standard library\n\
                 works, but `time.time()` is the event's time, random numbers are\n\
                 seeded by the event id, the filesystem is empty and there are no sockets. Pure\n\
                 Python packages can be vendored next to `plugin.py`.\n"
            }
        }
    }
}

/// The plugin name for a project directory: its last path component.
pub fn name_of(dir: &Path) -> Result<String, ScaffoldError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let valid = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if valid {
        Ok(name)
    } else {
        Err(ScaffoldError::BadName(name))
    }
}

/// Every file of a `lang` project named `name`, as (relative path, text).
pub fn files(name: &str, lang: Lang) -> Vec<(String, String)> {
    let fill = |text: &str| text.replace("{{name}}", name);
    let mut files: Vec<(String, String)> = lang
        .templates()
        .iter()
        .map(|(path, text)| (path.to_string(), fill(text)))
        .collect();
    let readme = fill(README)
        .replace("{{language}}", &lang.to_string())
        .replace("{{files}}", lang.file_rows())
        .replace("{{needs}}", lang.needs())
        .replace("{{language_notes}}", lang.notes());
    files.extend([
        ("README.md".to_string(), readme),
        ("event.json".to_string(), EVENT.to_string()),
        ("config.json".to_string(), CONFIG.to_string()),
        ("wit/plugin.wit".to_string(), WIT.to_string()),
        (".gitignore".to_string(), GITIGNORE.to_string()),
    ]);
    files
}

/// Creates the project in `dir` (which must not exist, or be empty) and
/// returns the files written.
pub fn create(dir: &Path, lang: Lang) -> Result<Vec<PathBuf>, ScaffoldError> {
    let name = name_of(dir)?;
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(ScaffoldError::NotEmpty(dir.to_path_buf()));
    }
    let mut written = Vec::new();
    for (relative, text) in files(&name, lang) {
        let path = dir.join(&relative);
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, text.as_bytes())
        };
        write(&path).map_err(|source| ScaffoldError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_carries_the_same_wit_as_the_repository() {
        assert_eq!(
            SDK_WIT, WIT,
            "guest-sdk/wit/plugin.wit must be a copy of wit/plugin.wit"
        );
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(name_of(Path::new("a/b/my-plugin")).unwrap(), "my-plugin");
        for bad in ["", "My", "1st", "a b", "x/..", "é"] {
            assert!(name_of(Path::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_project_has_its_makefile_samples_wit_and_no_placeholders() {
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            let files = files("shout", lang);
            let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
            for needed in [
                "Makefile",
                "README.md",
                "event.json",
                "config.json",
                "wit/plugin.wit",
            ] {
                assert!(names.contains(&needed), "{lang}: {needed} missing");
            }
            for (path, text) in &files {
                assert!(!text.contains("{{"), "{lang}: {path} keeps a placeholder");
            }
            serde_json::from_str::<serde_json::Value>(EVENT).unwrap();
        }
    }

    #[test]
    fn an_existing_project_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("shout");
        create(&project, Lang::Js).unwrap();
        let err = create(&project, Lang::Python).unwrap_err();
        assert!(matches!(err, ScaffoldError::NotEmpty(_)), "{err}");
        assert!(project.join("plugin.js").exists());
        assert!(!project.join("plugin.py").exists());
    }
}
