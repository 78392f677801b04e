//! `start --config FILE`: settings from a TOML file whose keys are the long
//! flags of `start` (`max-line = 65536`). Each setting the command line does
//! not give becomes that flag, and the command line is parsed again: a value
//! in the file is checked, defaulted and explained exactly as the flag is,
//! and there is no second list of settings to keep in step with the flags.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

use crate::config::{RoleKind, Spec};

/// Parses the command line, merged with the config file when one is named.
/// Exits 2 (bad usage) with the reason if the file is unusable.
pub fn matches(cmd: Command) -> ArgMatches {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    let parsed = cmd.clone().get_matches_from(&argv);
    let Some((sub, given)) = parsed.subcommand() else { return parsed };
    let Some(path) = given.try_get_one::<PathBuf>("config").ok().flatten() else { return parsed };
    let start = cmd.find_subcommand("start").expect("every server has start");
    match read(path).and_then(|table| flags(&table, start, given)) {
        Ok(flags) => {
            argv.extend(flags.into_iter().map(OsString::from));
            cmd.get_matches_from(argv)
        }
        Err(e) => {
            eprintln!("{}: {sub}: config file {}: {e}", cmd.get_name(), path.display());
            std::process::exit(2);
        }
    }
}

fn read(path: &Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    text.parse().map_err(|e: toml::de::Error| e.to_string())
}

/// The flags the file adds: one per key, unless the command line gave it.
fn flags(table: &toml::Table, start: &Command, given: &ArgMatches) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (key, value) in table {
        let arg = start
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !matches!(key.as_str(), "config" | "help"));
        let Some(arg) = arg else {
            let keys: Vec<&str> = start
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| !matches!(*l, "config" | "help"))
                .collect();
            return Err(format!("unknown key `{key}`; the keys are the long flags of `start`: {}", keys.join(", ")));
        };
        if given.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue; // the command line wins
        }
        match value {
            toml::Value::Boolean(on) if !arg.get_action().takes_values() => {
                if *on {
                    out.push(format!("--{key}"));
                }
            }
            toml::Value::String(s) if arg.get_action().takes_values() => out.push(format!("--{key}={s}")),
            toml::Value::Integer(n) if arg.get_action().takes_values() => out.push(format!("--{key}={n}")),
            _ if arg.get_action().takes_values() => return Err(format!("`{key}` must be a string or an integer")),
            _ => return Err(format!("`{key}` must be true or false")),
        }
    }
    Ok(out)
}

/// The example file that `start --help` shows.
pub fn example(spec: &Spec) -> String {
    let name = spec.name;
    let role = match spec.role {
        RoleKind::PubSub => format!(
            "count = {}\nchannel = \"127.0.0.1:2206\"\ntopic = \"topic1\"\nmax-send-queue = 8388608\n",
            spec.count
        ),
        RoleKind::Channel => "max-link-buffer = 16777216\n".to_owned(),
    };
    let listen = if spec.role == RoleKind::Channel { "127.0.0.1" } else { "0.0.0.0" };
    let body = format!(
        "listen = \"{listen}:{port}\"\npid-file = \"/run/fanout/{name}.pid\"\nmetrics = \"127.0.0.1:{metrics}\"\n{role}",
        port = spec.port,
        metrics = 9000 + spec.port % 1000,
    );
    let indented: String = body.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "Config file (--config FILE, TOML): the keys are the long flags of `start`, and a flag given \
         on the command line wins over the file. Relative paths are taken from the current directory. \
         For example /etc/fanout/{name}.toml:\n\n{indented}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{self, PubSubArgs};
    use crate::config::DATA_SOURCE;

    fn merge(file: &str, argv: &[&str]) -> Result<Vec<String>, String> {
        let cmd = args::command::<PubSubArgs>(&DATA_SOURCE);
        let m = cmd.clone().try_get_matches_from(argv).unwrap();
        let (_, given) = m.subcommand().unwrap();
        flags(&file.parse().unwrap(), cmd.find_subcommand("start").unwrap(), given)
    }

    #[test]
    fn file_fills_in_what_the_command_line_leaves() {
        let file = "count = 2\ntopic = \"news\"\ndaemon = true\nmax-line = 1024\n";
        let got = merge(file, &["data-source", "start", "--count", "1", "--config", "x.toml"]).unwrap();
        assert_eq!(got, ["--daemon", "--max-line=1024", "--topic=news"]);
        assert_eq!(merge("daemon = false\n", &["data-source", "start"]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let e = merge("colour = \"blue\"\n", &["data-source", "start"]).unwrap_err();
        assert!(e.contains("unknown key `colour`") && e.contains("max-line"), "{e}");
        assert!(merge("config = \"y\"\n", &["data-source", "start"]).unwrap_err().contains("unknown key `config`"));
        assert!(merge("count = [1]\n", &["data-source", "start"]).unwrap_err().contains("`count` must be"));
        assert!(merge("daemon = \"yes\"\n", &["data-source", "start"]).unwrap_err().contains("`daemon` must be true"));
    }

    #[test]
    fn the_example_is_a_valid_file() {
        let text = example(&DATA_SOURCE);
        let body: String = text.lines().filter_map(|l| l.strip_prefix("  ")).map(|l| format!("{l}\n")).collect();
        let flags = merge(&body, &["data-source", "start"]).unwrap();
        assert_eq!(flags.len(), 7);
        let argv = ["data-source", "start"].into_iter().map(String::from).chain(flags);
        args::command::<PubSubArgs>(&DATA_SOURCE).try_get_matches_from(argv).unwrap();
    }
}
