//! `inhoused`: the daemon. Parses flags over the config file, runs, maps errors to exit codes.

use clap::Parser;
use inhouse::config::{self, Config};
use std::path::PathBuf;
use std::process::ExitCode;

/// Serve GGUF models with an OpenAI-compatible API on a Unix socket.
#[derive(Parser, Debug)]
#[command(name = "inhoused", version = env!("CARGO_PKG_VERSION"), about)]
struct Args {
    /// Configuration file (TOML). Default: /etc/inhouse/inhouse.toml when it exists.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Unix socket to listen on [default: /run/inhouse/inhouse.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// State directory [default: /var/lib/inhouse].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// A model to serve: PATH (named after the file stem, lower-cased) or NAME=PATH. Repeatable.
    #[arg(long = "model", value_name = "[NAME=]PATH")]
    models: Vec<String>,
    /// Master key file (mode 0600). Default: the systemd credential inhouse-master-key.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// CPU threads for llama.cpp.
    #[arg(long, value_name = "N")]
    threads: Option<u32>,
    /// Context size in tokens.
    #[arg(long, value_name = "N")]
    ctx_size: Option<u32>,
    /// Layers to offload to the GPU: a number or "auto".
    #[arg(long, value_name = "N|auto")]
    gpu_layers: Option<config::GpuLayersSetting>,
    /// Most memory the resident models may use together, e.g. 8GiB, or "auto".
    #[arg(long, value_name = "SIZE")]
    memory_budget: Option<config::ByteSize>,
    /// Requests per model decoded together (continuous batching).
    #[arg(long, value_name = "N")]
    slots: Option<u32>,
    /// Check the configuration, print it and exit.
    #[arg(long)]
    validate_config: bool,
    /// Restore a backup archive (made by `inhouse admin backup`) into --state-dir, which must
    /// be empty or absent, with --key-file, then exit (offline: no daemon runs). Nothing
    /// changes unless every check passes.
    #[arg(long, value_name = "FILE")]
    restore: Option<PathBuf>,
}

/// `--version`: the version, llama.cpp's, and the ggml CPU variant this machine gets (which
/// loads the variant libraries, as serving would).
fn long_version() -> String {
    let cpu = match inhouse::engine::cpu_backend() {
        Ok(c) => format!(
            "ggml CPU variant: {} ({})\nggml backends: {}",
            c.variant,
            c.features.join(" "),
            c.dir.display()
        ),
        Err(e) => format!("ggml CPU variant: none ({e})"),
    };
    format!(
        "{}\nllama.cpp b11434 via llama-cpp-2 0.1.160, dynamic CPU backends\n{cpu}",
        env!("CARGO_PKG_VERSION")
    )
}

fn load_config(args: &Args) -> Result<Config, config::ConfigError> {
    let mut cfg = match &args.config {
        Some(path) => {
            let cfg = Config::from_file(path)?;
            inhouse::storage::backup::note_config_file(path);
            cfg
        }
        None => {
            let default = PathBuf::from(config::DEFAULT_CONFIG_PATH);
            if default.exists() {
                inhouse::storage::backup::note_config_file(&default);
                Config::from_file(&default)?
            } else {
                Config::default()
            }
        }
    };
    if let Some(s) = &args.socket {
        cfg.socket = s.clone();
    }
    if let Some(d) = &args.state_dir {
        cfg.state_dir = d.clone();
    }
    for m in &args.models {
        let (name, path) = config::parse_model_arg(m)?;
        cfg.models.insert(name, path);
    }
    if let Some(k) = &args.key_file {
        cfg.key_file = Some(k.clone());
    }
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    if let Some(c) = args.ctx_size {
        cfg.ctx_size = c;
    }
    if let Some(g) = args.gpu_layers {
        cfg.gpu_layers = g;
    }
    if let Some(b) = args.memory_budget {
        cfg.memory_budget = b;
    }
    if let Some(n) = args.slots {
        cfg.slots = n;
    }
    cfg.check()?;
    Ok(cfg)
}

fn main() -> ExitCode {
    let mut cmd = <Args as clap::CommandFactory>::command();
    if std::env::args_os().any(|a| a == "--version") {
        // Computed only when asked for: it loads the CPU variant libraries.
        cmd = cmd.long_version(Box::leak(long_version().into_boxed_str()) as &'static str);
    }
    let args = match <Args as clap::FromArgMatches>::from_arg_matches(&cmd.get_matches()) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    // To the journal with structured fields under systemd, plain lines on stderr otherwise.
    inhouse::daemon::systemd::init_logging("info,llama-cpp-2=warn");
    let cfg = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("inhoused: {e}");
            return ExitCode::from(inhouse::daemon::EXIT_CONFIG as u8);
        }
    };
    if args.validate_config {
        println!("{cfg:#?}");
        return ExitCode::SUCCESS;
    }
    if let Some(archive) = &args.restore {
        return restore(archive, &args, &cfg);
    }
    // Before the runtime starts any thread: this reads and unsets systemd's variables.
    let activation = match inhouse::daemon::systemd::Activation::from_env() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("inhoused: socket activation: {e}");
            return ExitCode::from(inhouse::daemon::EXIT_CONFIG as u8);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("inhoused: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(inhouse::daemon::run(cfg, activation)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inhoused: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// `--restore FILE`: offline; exit 0 when restored, 78 with the reason otherwise (nothing
/// changed then).
fn restore(archive: &std::path::Path, args: &Args, cfg: &Config) -> ExitCode {
    let config_exit = ExitCode::from(inhouse::daemon::EXIT_CONFIG as u8);
    if args.state_dir.is_none() {
        eprintln!("inhoused: --restore needs --state-dir DIR (an empty or absent directory)");
        return config_exit;
    }
    let Some(key_file) = &cfg.key_file else {
        eprintln!("inhoused: --restore needs --key-file KEY (the master key of the backup)");
        return config_exit;
    };
    let key = match inhouse::crypto::MasterKey::load(key_file) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("inhoused: master key {}: {e}", key_file.display());
            return config_exit;
        }
    };
    match inhouse::storage::backup::restore(archive, &cfg.state_dir, key) {
        Ok(r) => {
            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            eprintln!(
                "inhoused: restored {} into {}; the first start appends a `restored` audit event",
                archive.display(),
                r.state_dir
            );
            if let Some(etc) = &r.restored_etc {
                eprintln!(
                    "inhoused: the archived configuration and trusted keys are in {etc}: compare \
                     them with /etc/inhouse and copy what you need"
                );
            }
            for m in &r.models_missing_files {
                eprintln!(
                    "inhoused: model {} has no file in the archive: copy it to {}/models/blobs/\
                     sha256-{} (mode 0440) before serving it",
                    m.name, r.state_dir, m.digest
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("inhoused: restore refused, nothing was changed: {e}");
            config_exit
        }
    }
}
