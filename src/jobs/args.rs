//! The toolchain's command line for each job kind: a pure function of the job's folder, its
//! spec and whether it resumes, so that what each kind runs is readable (and tested) in one
//! place. Which binary runs it, and under `nice`, is the process supervisor's business
//! ([`super::process`]).
//!
//! Every path points inside the job's working folder (`state-dir/jobs/work/ID/`): its data was
//! moved to `data/` at submission, and the toolchain writes its outputs next to it, where the
//! runner collects them ([`super::runner`]). The models are read where the store keeps them.

use super::{DataRef, JobKind, JobSpec};
use std::ffi::OsString;
use std::path::Path;

/// The toolchain's arguments for a job working in `work`.
pub(super) fn toolchain_args(work: &Path, spec: &JobSpec, resume: bool) -> Vec<OsString> {
    let data = |role: &str, d: &DataRef| work.join("data").join(format!("{role}.{}", d.format));
    let mut a: Vec<OsString> = vec![];
    let o = &spec.options;
    match spec.kind {
        JobKind::Prepare => {
            a.push("prepare".into());
            if let Some(d) = &spec.data {
                a.push(data("train", d).into());
            }
            a.push("--out".into());
            a.push(work.join("out").into());
            if let Some(s) = o.seed {
                a.extend(["--seed".into(), s.to_string().into()]);
            }
            if let Some(s) = o.eval_share {
                a.extend(["--eval-share".into(), s.to_string().into()]);
            }
            if let Some(s) = o.near_dup_threshold {
                a.extend(["--near-dup-threshold".into(), s.to_string().into()]);
            }
            if let Some(aug) = &o.augment {
                a.extend(["--augment".into(), aug.into()]);
            }
        }
        JobKind::Finetune => {
            a.push("finetune".into());
            if let Some(m) = &spec.model {
                a.extend(["--model".into(), m.path.clone().into()]);
            }
            if let Some(d) = &spec.data {
                a.extend(["--data".into(), data("train", d).into()]);
            }
            if let Some(d) = &spec.eval_data {
                a.extend(["--eval".into(), data("eval", d).into()]);
            }
            a.extend(["--out".into(), work.join("out.gguf").into()]);
            a.extend(["--checkpoint-dir".into(), work.join("checkpoints").into()]);
            if let Some(e) = o.epochs {
                a.extend(["--epochs".into(), e.to_string().into()]);
            }
            if let Some(lr) = o.lr {
                a.extend(["--lr".into(), lr.to_string().into()]);
            }
            if let Some(opt) = &o.optimizer {
                a.extend(["--optimizer".into(), opt.into()]);
            }
            if let Some(c) = o.ctx {
                a.extend(["--ctx".into(), c.to_string().into()]);
            }
            if let Some(w) = o.max_windows {
                a.extend(["--max-windows".into(), w.to_string().into()]);
            }
            if let Some(s) = o.seed {
                a.extend(["--seed".into(), s.to_string().into()]);
            }
            if let Some(r) = o.lora_rank {
                a.extend(["--lora-rank".into(), r.to_string().into()]);
            }
            if let Some(al) = o.lora_alpha {
                a.extend(["--lora-alpha".into(), al.to_string().into()]);
            }
            if let Some(t) = &o.lora_targets {
                a.extend(["--lora-targets".into(), t.join(",").into()]);
            }
            if o.train_on_inputs == Some(true) {
                a.push("--train-on-inputs".into());
            }
            if let Some(w) = o.warmup_ratio {
                a.extend(["--warmup-ratio".into(), w.to_string().into()]);
            }
            if let Some(sc) = &o.schedule {
                a.extend(["--schedule".into(), sc.into()]);
            }
            if let Some(g) = o.grad_accum {
                a.extend(["--grad-accum".into(), g.to_string().into()]);
            }
            if let Some(n) = o.eval_every {
                a.extend(["--eval-every".into(), n.to_string().into()]);
            }
            if let Some(wd) = o.weight_decay {
                a.extend(["--weight-decay".into(), wd.to_string().into()]);
            }
            if o.gate.is_some() {
                // The runner writes the policy there before it starts the process.
                a.extend(["--gate".into(), work.join("gate.json").into()]);
            }
            if resume {
                a.push("--resume".into());
            }
        }
        JobKind::Quantize => {
            a.push("quantize".into());
            if let Some(m) = &spec.model {
                a.push(m.path.clone().into());
            }
            a.push(work.join("out.gguf").into());
            a.extend([
                "--type".into(),
                o.quant_type.as_deref().unwrap_or("Q8_0").into(),
            ]);
        }
        JobKind::Synth => {
            a.push("synth".into());
            if let Some(d) = &spec.data {
                a.push(data("train", d).into());
            }
            if let Some(m) = &spec.model {
                a.extend(["--teacher".into(), m.path.clone().into()]);
            }
            a.push("--out".into());
            a.push(work.join("out").into());
            let mut opt = |flag: &str, v: Option<String>| {
                if let Some(v) = v {
                    a.extend([flag.into(), v.into()]);
                }
            };
            opt("--seed", o.seed.map(|v| v.to_string()));
            opt("--eval-share", o.eval_share.map(|v| v.to_string()));
            opt("--per-chunk", o.per_chunk.map(|v| v.to_string()));
            opt("--max-samples", o.max_samples.map(|v| v.to_string()));
            opt("--chunk-tokens", o.chunk_tokens.map(|v| v.to_string()));
            opt("--style", o.style.clone());
        }
        JobKind::Eval => {
            a.push("eval".into());
            for m in [&spec.model, &spec.compare].into_iter().flatten() {
                a.extend(["--model".into(), m.path.clone().into()]);
            }
            if let Some(d) = &spec.data {
                a.extend(["--data".into(), data("train", d).into()]);
            }
            a.extend(["--out".into(), work.join("report.json").into()]);
            if let Some(c) = o.ctx {
                a.extend(["--ctx".into(), c.to_string().into()]);
            }
        }
    }
    if spec.kind != JobKind::Prepare {
        if let Some(t) = o.threads {
            a.extend(["--threads".into(), t.to_string().into()]);
        }
        // `prepare` has no progress protocol (yet): it shows fraction 0 until it ends.
        a.extend(["--progress".into(), "json".into()]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{JobOptions, ModelRef};

    const WORK: &str = "/state/jobs/work/7";

    fn model(name: &str) -> ModelRef {
        ModelRef {
            name: name.into(),
            digest: "ab".into(),
            path: format!("/state/models/blobs/{name}").into(),
        }
    }

    fn dataset(id: &str, format: &str) -> DataRef {
        DataRef {
            id: id.into(),
            sha256: "cd".into(),
            size: 10,
            format: format.into(),
        }
    }

    fn spec(kind: JobKind) -> JobSpec {
        JobSpec {
            kind,
            model: None,
            compare: None,
            data: None,
            eval_data: None,
            options: JobOptions::default(),
            output_name: None,
            data_reports: Vec::new(),
        }
    }

    /// The arguments as strings, for readable comparisons.
    fn args(spec: &JobSpec, resume: bool) -> Vec<String> {
        toolchain_args(Path::new(WORK), spec, resume)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn prepare_reads_its_documents_and_writes_a_folder_without_progress() {
        let mut s = spec(JobKind::Prepare);
        s.data = Some(dataset("d1", "md"));
        assert_eq!(
            args(&s, false),
            [
                "prepare",
                "/state/jobs/work/7/data/train.md",
                "--out",
                "/state/jobs/work/7/out"
            ]
        );
        s.options = JobOptions {
            seed: Some(3),
            eval_share: Some(0.25),
            near_dup_threshold: Some(0.9),
            augment: Some("counterfactual".into()),
            // Not a prepare option: never passed to it, even if a spec carried it.
            threads: Some(4),
            ..JobOptions::default()
        };
        assert_eq!(
            args(&s, true),
            [
                "prepare",
                "/state/jobs/work/7/data/train.md",
                "--out",
                "/state/jobs/work/7/out",
                "--seed",
                "3",
                "--eval-share",
                "0.25",
                "--near-dup-threshold",
                "0.9",
                "--augment",
                "counterfactual"
            ]
        );
    }

    #[test]
    fn synth_reads_documents_with_its_teacher_and_reports_progress() {
        let mut s = spec(JobKind::Synth);
        s.model = Some(model("qwen"));
        s.data = Some(dataset("d1", "txt"));
        s.options = JobOptions {
            seed: Some(5),
            per_chunk: Some(2),
            style: Some("mix".into()),
            threads: Some(2),
            ..JobOptions::default()
        };
        assert_eq!(
            args(&s, false),
            [
                "synth",
                "/state/jobs/work/7/data/train.txt",
                "--teacher",
                "/state/models/blobs/qwen",
                "--out",
                "/state/jobs/work/7/out",
                "--seed",
                "5",
                "--per-chunk",
                "2",
                "--style",
                "mix",
                "--threads",
                "2",
                "--progress",
                "json"
            ]
        );
    }

    #[test]
    fn finetune_names_model_data_checkpoints_and_options_and_resumes_on_request() {
        let mut s = spec(JobKind::Finetune);
        s.model = Some(model("smol"));
        s.data = Some(dataset("d1", "jsonl"));
        s.eval_data = Some(dataset("d2", "jsonl"));
        s.options = JobOptions {
            epochs: Some(2),
            lr: Some(0.0001),
            optimizer: Some("sgd".into()),
            ctx: Some(256),
            max_windows: Some(8),
            threads: Some(2),
            ..JobOptions::default()
        };
        let expected = [
            "finetune",
            "--model",
            "/state/models/blobs/smol",
            "--data",
            "/state/jobs/work/7/data/train.jsonl",
            "--eval",
            "/state/jobs/work/7/data/eval.jsonl",
            "--out",
            "/state/jobs/work/7/out.gguf",
            "--checkpoint-dir",
            "/state/jobs/work/7/checkpoints",
            "--epochs",
            "2",
            "--lr",
            "0.0001",
            "--optimizer",
            "sgd",
            "--ctx",
            "256",
            "--max-windows",
            "8",
            "--threads",
            "2",
            "--progress",
            "json",
        ];
        assert_eq!(args(&s, false), expected);
        let resumed = args(&s, true);
        assert_eq!(resumed[..21], expected[..21]);
        assert_eq!(
            resumed[21..],
            ["--resume", "--threads", "2", "--progress", "json"]
        );
    }

    #[test]
    fn finetune_without_options_gets_only_its_paths() {
        let mut s = spec(JobKind::Finetune);
        s.model = Some(model("smol"));
        s.data = Some(dataset("d1", "jsonl"));
        assert_eq!(
            args(&s, false),
            [
                "finetune",
                "--model",
                "/state/models/blobs/smol",
                "--data",
                "/state/jobs/work/7/data/train.jsonl",
                "--out",
                "/state/jobs/work/7/out.gguf",
                "--checkpoint-dir",
                "/state/jobs/work/7/checkpoints",
                "--progress",
                "json"
            ]
        );
    }

    #[test]
    fn quantize_defaults_to_q8_0_and_never_resumes() {
        let mut s = spec(JobKind::Quantize);
        s.model = Some(model("smol"));
        let expected = [
            "quantize",
            "/state/models/blobs/smol",
            "/state/jobs/work/7/out.gguf",
            "--type",
            "Q8_0",
            "--progress",
            "json",
        ];
        assert_eq!(args(&s, false), expected);
        assert_eq!(args(&s, true), expected, "only a finetune resumes");
        s.options = JobOptions {
            quant_type: Some("Q4_K_M".into()),
            threads: Some(3),
            ..JobOptions::default()
        };
        assert_eq!(
            args(&s, false),
            [
                "quantize",
                "/state/models/blobs/smol",
                "/state/jobs/work/7/out.gguf",
                "--type",
                "Q4_K_M",
                "--threads",
                "3",
                "--progress",
                "json"
            ]
        );
    }

    #[test]
    fn eval_passes_the_compared_model_second() {
        let mut s = spec(JobKind::Eval);
        s.model = Some(model("a"));
        s.compare = Some(model("b"));
        s.data = Some(dataset("d1", "jsonl"));
        s.options = JobOptions {
            ctx: Some(512),
            ..JobOptions::default()
        };
        assert_eq!(
            args(&s, false),
            [
                "eval",
                "--model",
                "/state/models/blobs/a",
                "--model",
                "/state/models/blobs/b",
                "--data",
                "/state/jobs/work/7/data/train.jsonl",
                "--out",
                "/state/jobs/work/7/report.json",
                "--ctx",
                "512",
                "--progress",
                "json"
            ]
        );
        s.compare = None;
        s.options = JobOptions::default();
        assert_eq!(
            args(&s, false),
            [
                "eval",
                "--model",
                "/state/models/blobs/a",
                "--data",
                "/state/jobs/work/7/data/train.jsonl",
                "--out",
                "/state/jobs/work/7/report.json",
                "--progress",
                "json"
            ]
        );
    }

    #[test]
    fn every_path_but_the_models_is_inside_the_job_folder() {
        let mut s = spec(JobKind::Finetune);
        s.model = Some(model("smol"));
        s.data = Some(dataset("d1", "jsonl"));
        s.eval_data = Some(dataset("d2", "jsonl"));
        for a in toolchain_args(Path::new(WORK), &s, true) {
            let p = Path::new(&a);
            if p.is_absolute() && !p.starts_with("/state/models") {
                assert!(p.starts_with(WORK), "{}", p.display());
            }
        }
    }
}
