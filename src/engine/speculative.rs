//! Speculative decoding: the rules, free of llama.cpp so they can be unit-tested; the engine
//! thread ([`super::llama`]) executes them.
//!
//! A speculative sequence adds up to `draft-max` proposed tokens after its sampled token in the
//! step's one decode, next to the other sequences' tokens; the model's logits at every position
//! then tell, in order, which proposals it would have produced itself ([`verify`]). Accepted
//! tokens cost one decode for several; the first rejected one is replaced by the model's own
//! token, and what follows it is removed from the KV cache.
//!
//! - Proposals come from the sequence's own text ([`lookup`], prompt lookup: the tokens that
//!   followed an earlier occurrence of its last n tokens, there or in what the same caller's
//!   previous request produced after the prefix the two share), or from a smaller draft model
//!   with the same vocabulary run greedily.
//! - Both proposers are deterministic, so verification is the standard rejection rule with a
//!   point-mass draft distribution q: a draft token d is accepted with probability
//!   min(1, p(d)/q(d)) = p(d), and on rejection the token is drawn from the residual
//!   norm(max(0, p − q)), which is p without d. Drawing x from p (the request's own sampler
//!   chain, grammar and penalties included) and accepting d exactly when x = d does both at once
//!   and emits x: every emitted token is a draw from the model's own distribution, one random
//!   draw per emitted token as without speculation. At temperature 0 that is the model's argmax.
//! - Drafting adapts per sequence ([`Adaptive`]): it keeps an estimate of the sequence's
//!   per-token acceptance and drafts the length that pays best ([`best_draft_len`]) given what a
//!   token of verification costs on a CPU ([`TOKEN_COST`]) and how many sequences share the
//!   step (each of them pays for the longer step); when no length pays it pauses, longer each
//!   time. And nothing is drafted in a step with more than `max-batch` generating sequences
//!   ([`step_allows_drafts`]).

use serde::Deserialize;
use std::collections::BTreeMap;

/// Where draft tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No speculation.
    #[default]
    Off,
    /// Prompt lookup: drafts taken from earlier occurrences of the last tokens in the prompt and
    /// the text so far.
    Ngram,
    /// A smaller model with the same vocabulary drafts (see `[speculative.drafts]`).
    Draft,
}

impl Mode {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Ngram => "ngram",
            Mode::Draft => "draft",
        }
    }
}

/// Default of `draft-max`.
pub const DEFAULT_DRAFT_MAX: u32 = 32;
/// Default of `ngram-min`.
pub const DEFAULT_NGRAM_MIN: u32 = 4;
/// Default of `ngram-max`.
pub const DEFAULT_NGRAM_MAX: u32 = 12;
/// Default of `max-batch`.
pub const DEFAULT_MAX_BATCH: u32 = 4;

/// The `[speculative]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SpeculativeConfig {
    /// `off`, `ngram` or `draft`, for every model without an override.
    pub mode: Mode,
    /// Most draft tokens verified per sequence and step.
    pub draft_max: u32,
    /// Shortest suffix of the text looked up for a prompt-lookup draft.
    pub ngram_min: u32,
    /// Longest suffix looked up (longer matches are tried first).
    pub ngram_max: u32,
    /// Drafting stops in a step where more sequences than this generate.
    pub max_batch: u32,
    /// What one more token in a decode costs, relative to a decode of one token (see
    /// [`TOKEN_COST`]): drafts are as long as pays at this price. 0 drafts as long as
    /// `draft-max` allows whenever anything is accepted (a GPU, where verification is nearly
    /// free; the tests).
    pub verify_cost: f32,
    /// What a one-token decode of the draft model costs, relative to one of its target's: each
    /// drafted token takes one. Unset: the ratio of the two models' weight sizes, at load.
    pub draft_cost: Option<f32>,
    /// Target model → its draft model (a model name of this daemon, same vocabulary).
    pub drafts: BTreeMap<String, String>,
    /// Per-model overrides of the settings above.
    pub models: BTreeMap<String, ModelOverride>,
}

/// `[speculative.models.NAME]`: what differs for one model.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ModelOverride {
    /// Mode for this model.
    pub mode: Option<Mode>,
    /// `draft-max` for this model.
    pub draft_max: Option<u32>,
    /// `ngram-min` for this model.
    pub ngram_min: Option<u32>,
    /// `ngram-max` for this model.
    pub ngram_max: Option<u32>,
    /// `max-batch` for this model.
    pub max_batch: Option<u32>,
    /// `verify-cost` for this model.
    pub verify_cost: Option<f32>,
    /// `draft-cost` for this model.
    pub draft_cost: Option<f32>,
}

impl Default for SpeculativeConfig {
    fn default() -> Self {
        SpeculativeConfig {
            mode: Mode::Off,
            draft_max: DEFAULT_DRAFT_MAX,
            ngram_min: DEFAULT_NGRAM_MIN,
            ngram_max: DEFAULT_NGRAM_MAX,
            max_batch: DEFAULT_MAX_BATCH,
            verify_cost: TOKEN_COST,
            draft_cost: None,
            drafts: BTreeMap::new(),
            models: BTreeMap::new(),
        }
    }
}

/// The speculation settings of one model, overrides applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Speculation {
    /// Where drafts come from.
    pub mode: Mode,
    /// Most draft tokens per sequence and step.
    pub draft_max: usize,
    /// Shortest suffix looked up.
    pub ngram_min: usize,
    /// Longest suffix looked up.
    pub ngram_max: usize,
    /// Drafting stops in steps with more generating sequences than this.
    pub max_batch: usize,
    /// What a token of verification costs (see [`SpeculativeConfig::verify_cost`]).
    pub verify_cost: f32,
    /// What a drafted token costs in draft-model decodes (see
    /// [`SpeculativeConfig::draft_cost`]; `None`: from the weight sizes at load).
    pub draft_cost: Option<f32>,
    /// The draft model's name, in `draft` mode.
    pub draft: Option<String>,
}

impl SpeculativeConfig {
    /// The settings of model `name` (a `base+adapter` name falls back to its base's override
    /// and draft).
    pub fn for_model(&self, name: &str) -> Speculation {
        let base = name.split('+').next().unwrap_or(name);
        let o = self
            .models
            .get(name)
            .or_else(|| self.models.get(base))
            .cloned()
            .unwrap_or_default();
        let draft = self
            .drafts
            .get(name)
            .or_else(|| self.drafts.get(base))
            .cloned();
        let mode = match (o.mode, self.mode) {
            (Some(m), _) => m,
            // A top-level `mode = "draft"` is for the models that have a draft; the others (the
            // draft models among them) are served without speculation.
            (None, Mode::Draft) if draft.is_none() => Mode::Off,
            (None, m) => m,
        };
        Speculation {
            mode,
            draft_max: o.draft_max.unwrap_or(self.draft_max) as usize,
            ngram_min: o.ngram_min.unwrap_or(self.ngram_min) as usize,
            ngram_max: o.ngram_max.unwrap_or(self.ngram_max) as usize,
            max_batch: o.max_batch.unwrap_or(self.max_batch) as usize,
            verify_cost: o.verify_cost.unwrap_or(self.verify_cost),
            draft_cost: o.draft_cost.or(self.draft_cost),
            draft,
        }
    }

    /// Checks ranges; the message names the key to fix.
    pub fn check(&self) -> Result<(), String> {
        let mut tables = vec![("speculative".to_string(), ModelOverride::default())];
        tables.extend(
            self.models
                .iter()
                .map(|(n, o)| (format!("speculative.models.{n}"), o.clone())),
        );
        for (table, o) in tables {
            let draft_max = o.draft_max.unwrap_or(self.draft_max);
            let (lo, hi) = (
                o.ngram_min.unwrap_or(self.ngram_min),
                o.ngram_max.unwrap_or(self.ngram_max),
            );
            let max_batch = o.max_batch.unwrap_or(self.max_batch);
            if !(1..=MAX_DRAFT).contains(&draft_max) {
                return Err(format!(
                    "{table}: draft-max = {draft_max} (must be 1..={MAX_DRAFT})"
                ));
            }
            if !(1..=64).contains(&lo) || !(1..=64).contains(&hi) || lo > hi {
                return Err(format!(
                    "{table}: ngram-min = {lo}, ngram-max = {hi} (must be 1..=64, \
                     ngram-min ≤ ngram-max)"
                ));
            }
            let cost = o.verify_cost.unwrap_or(self.verify_cost);
            if !(0.0..=2.0).contains(&cost) {
                return Err(format!("{table}: verify-cost = {cost} (must be 0..=2)"));
            }
            if let Some(c) = o.draft_cost.or(self.draft_cost) {
                if !(0.0..=2.0).contains(&c) {
                    return Err(format!("{table}: draft-cost = {c} (must be 0..=2)"));
                }
            }
            if !(1..=64).contains(&max_batch) {
                return Err(format!("{table}: max-batch = {max_batch} (must be 1..=64)"));
            }
        }
        for (target, draft) in &self.drafts {
            if target == draft {
                // Allowed (tests use it), but only as an explicit choice: nothing to check.
                continue;
            }
            if draft.is_empty() {
                return Err(format!(
                    "speculative.drafts.{target}: the draft model name is empty"
                ));
            }
        }
        let modes = std::iter::once(("speculative".to_string(), Some(self.mode))).chain(
            self.models
                .iter()
                .map(|(n, o)| (format!("speculative.models.{n}"), o.mode)),
        );
        for (table, mode) in modes {
            if mode == Some(Mode::Draft) {
                let named: Vec<&str> = if table == "speculative" {
                    Vec::new()
                } else {
                    vec![table.trim_start_matches("speculative.models.")]
                };
                if let Some(n) = named.first() {
                    let base = n.split('+').next().unwrap_or(n);
                    if !self.drafts.contains_key(*n) && !self.drafts.contains_key(base) {
                        return Err(format!(
                            "{table}: mode = \"draft\" needs a draft model: add \
                             {n} = \"DRAFT-MODEL\" to [speculative.drafts]"
                        ));
                    }
                } else if self.drafts.is_empty() {
                    return Err("speculative: mode = \"draft\" needs [speculative.drafts] \
                                (target model = \"draft model\")"
                        .into());
                }
            }
        }
        Ok(())
    }
}

/// Most draft tokens per sequence and step that the config allows.
pub const MAX_DRAFT: u32 = 32;

/// A prompt-lookup draft from `history` alone: see [`lookup`].
pub fn propose_ngram<T: PartialEq + Copy>(
    history: &[T],
    ngram_min: usize,
    ngram_max: usize,
    max: usize,
) -> Vec<T> {
    lookup(&[], history, ngram_min, ngram_max, max).draft
}

/// What [`lookup`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<T> {
    /// The proposed tokens (empty when nothing matched).
    pub draft: Vec<T>,
    /// How long a suffix of the history matched (`ngram-min..=ngram-max`; 0: none).
    pub matched: usize,
    /// How far back the chosen occurrence agrees with the history, up to [`CONTEXT`] tokens
    /// (at least `matched`): how long the copy under way has been.
    pub context: usize,
}

/// The longest agreement [`lookup`] measures between an occurrence and the history.
pub const CONTEXT: usize = 64;

/// A prompt-lookup draft: finds earlier occurrences of the final `n` tokens of `history`
/// (trying `n` from `ngram_max` down to `ngram_min`) in `earlier` followed by `history`, and
/// proposes the tokens that followed one of them, at most `max`.
///
/// `earlier` is text the same caller's previous request produced after the prefix this one
/// shares with it (what the reused cache slot held): a retry, or a request that repeats most
/// of the last one, is likely to repeat its answer too.
///
/// Of the occurrences, the one whose preceding tokens agree with the history for longest
/// (up to [`CONTEXT`]) is taken, the latest on ties: in a rewrite or an edit the text being
/// copied is the one read last, and in repeated structure (JSON fields, list items) the
/// latest instance is the likeliest to continue the same way, but a passage that is being
/// copied, or an answer being repeated, agrees for longer than an incidental match.
pub fn lookup<T: PartialEq + Copy>(
    earlier: &[T],
    history: &[T],
    ngram_min: usize,
    ngram_max: usize,
    max: usize,
) -> Found<T> {
    let none = Found {
        draft: Vec::new(),
        matched: 0,
        context: 0,
    };
    if max == 0 || ngram_min == 0 {
        return none;
    }
    // The text searched: `earlier`, then `history`, without concatenating them.
    let e = earlier.len();
    let len = e + history.len();
    let at = |i: usize| if i < e { earlier[i] } else { history[i - e] };
    // The longest suffix that may match: a shorter one is tried only when no occurrence has
    // that much in common with the end of the history.
    let longest = ngram_max.min(history.len().saturating_sub(1));
    if ngram_min > longest {
        return none;
    }
    // One pass over the places an occurrence could end (`end`: the first token after it),
    // latest first, measuring how far back each agrees with the end of the history: the
    // matched suffix is that agreement up to `longest`, and the best place has the longest
    // matched suffix, then the longest agreement, then is the latest. An occurrence lies
    // wholly in `earlier`, with a token after it there, or wholly in `history`; it may
    // overlap the suffix (a repeating run), and is always followed by at least one token.
    let mut best: Option<(usize, usize, usize)> = None;
    for end in (1..len).rev() {
        if end == e {
            continue;
        }
        let floor = if end > e { e } else { 0 };
        let mut agree = 0;
        while agree < CONTEXT && agree < end - floor && at(end - agree - 1) == at(len - agree - 1) {
            agree += 1;
        }
        if agree < ngram_min {
            continue;
        }
        let matched = agree.min(longest);
        if best.is_none_or(|(_, m, a)| (matched, agree) > (m, a)) {
            best = Some((end, matched, agree));
            if agree == CONTEXT {
                break;
            }
        }
    }
    if let Some((from, matched, context)) = best {
        // The continuation stays in the text the occurrence is in.
        let to = (from + max).min(if from < e { e } else { len });
        return Found {
            draft: (from..to).map(at).collect(),
            matched,
            context,
        };
    }
    none
}

/// Verification of one sequence's draft: `sampled(j)` draws the model's own token at position
/// `j` of the verified run (position 0 follows the sequence's last token, position `j` follows
/// draft token `j - 1`), and returns `None` when the sequence ends there (end of text, a stop
/// string, its length). Positions are drawn in order and only while the draft holds: draft
/// token `j` is accepted when the token drawn at `j` equals it (the rejection rule for a
/// deterministic draft, see the module doc). Returns the tokens emitted, each one a draw, and
/// how many draft tokens were accepted.
pub fn verify<T: PartialEq + Copy>(
    draft: &[T],
    mut sampled: impl FnMut(usize) -> Option<T>,
) -> (Vec<T>, usize) {
    let mut emitted = Vec::with_capacity(draft.len() + 1);
    for j in 0..=draft.len() {
        let Some(x) = sampled(j) else {
            break;
        };
        emitted.push(x);
        if j == draft.len() || draft[j] != x {
            break;
        }
    }
    let accepted = emitted
        .iter()
        .zip(draft)
        .take_while(|(e, d)| e == d)
        .count();
    (emitted, accepted)
}

/// What one more token in a decode costs, relative to a decode of one token, on a CPU: a draft
/// of k tokens makes the step cost about 1 + (k + 1) × this, the first draft token paying the
/// switch from the one-row to the several-row kernels as well. Measured here (2 cores,
/// `cargo bench --bench prompt_settings`, a decode of k + 1 tokens of one sequence against one):
/// SmolLM2 1.9× for one draft token, 5.8× for 8, 17.8× for 32; Qwen2.5-Coder-0.5B 2.4×, 5.9×,
/// 14.6×. (Prompt speed against generation speed, 0.35 a token, says what a full 512-token batch
/// costs, not a draft's few tokens.)
pub const TOKEN_COST: f32 = 0.5;

/// A draft must promise at least this much more tokens per unit of step time than decoding
/// without one (the rest is overhead the model above leaves out: the lookup, the KV trim, the
/// split of a step with uneven sequences into several graph evaluations).
const MIN_GAIN: f32 = 1.1;

/// Expected tokens emitted per step with a draft of `k` tokens each accepted with probability
/// `alpha` given the previous ones were: the sampled token, plus the accepted run.
pub fn expected_tokens(alpha: f32, k: usize) -> f32 {
    let mut run = 0.0;
    let mut p = 1.0;
    for _ in 0..k {
        p *= alpha;
        run += p;
    }
    1.0 + run
}

/// The draft length (0..=`max`) that maximizes tokens per unit of time for a sequence with
/// per-token acceptance `alpha`, in a step where `generating` sequences decode together: the
/// step costs 1 + (generating - 1) × `cost` without drafts and (k + 1) × `cost` more with one
/// (`cost`: `verify-cost`, by default [`TOKEN_COST`]), plus k × `draft_cost` when a draft
/// model decodes the k tokens first (0 for prompt lookup), and that cost is paid by every
/// sequence in the step, while only this one gains. 0 when no length gains [`MIN_GAIN`].
pub fn best_draft_len(
    alpha: f32,
    generating: usize,
    max: usize,
    cost: f32,
    draft_cost: f32,
) -> usize {
    let n = generating.max(1) as f32;
    let base = 1.0 + (n - 1.0) * cost;
    let mut best = (0, 1.0f32);
    for k in 1..=max {
        // Aggregate tokens per unit of time, relative to the step without a draft.
        let extra = (k + 1) as f32 * cost + k as f32 * draft_cost;
        let gain = ((n - 1.0 + expected_tokens(alpha, k)) / n) / ((base + extra) / base);
        if gain > best.1 {
            best = (k, gain);
        }
    }
    // At no cost any gain is worth it.
    if best.1 >= MIN_GAIN || (cost == 0.0 && draft_cost == 0.0 && best.0 > 0) {
        best.0
    } else {
        0
    }
}

/// An estimate of the probability that a draft token is accepted after the previous one was:
/// accepted draft tokens over draft tokens verified up to and including the first rejected
/// one, both decayed by [`DECAY`] at each verification.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Estimate {
    hits: f32,
    trials: f32,
}

impl Estimate {
    /// An estimate of `hits / trials` with the weight of `trials` verified tokens.
    const fn new((hits, trials): (f32, f32)) -> Self {
        Estimate { hits, trials }
    }

    fn alpha(&self) -> f32 {
        (self.hits / self.trials.max(1e-3)).clamp(0.0, 1.0)
    }

    /// Weighs the past down for a new verification.
    fn decay(&mut self) {
        self.hits *= DECAY;
        self.trials *= DECAY;
    }

    /// Counts `accepted` tokens taken and `rejected` (0 or 1) refused.
    fn count(&mut self, accepted: usize, rejected: usize) {
        self.hits += accepted as f32;
        self.trials += (accepted + rejected) as f32;
    }

    /// A verification of `drafted` tokens of which `accepted` (a prefix) were taken.
    fn record(&mut self, drafted: usize, accepted: usize) {
        if drafted > 0 {
            self.decay();
            self.count(accepted, usize::from(accepted < drafted));
        }
    }
}

/// A sequence's drafting state: its estimated per-token acceptance, and whether it is pausing.
#[derive(Debug, Clone, PartialEq)]
pub struct Adaptive {
    estimate: Estimate,
    /// Steps left without drafting.
    pub pause: u32,
    /// How long the next pause lasts.
    next_pause: u32,
    /// The first draft, and the first after a pause, is one token: a cheap probe of whether the
    /// text is (again) predictable.
    probe: bool,
    max: usize,
}

/// Weight kept by past verifications at each new one (about the last five count).
const DECAY: f32 = 0.8;
/// The estimate a sequence starts with, and restarts from after a pause: 95% acceptance with
/// the weight of two verified tokens, so that one rejection is enough to stop drafting. On a
/// CPU only nearly certain drafts pay (see [`TOKEN_COST`]): a lower prior would never draft.
const PRIOR: (f32, f32) = (1.9, 2.0);
/// The first pause when no draft length pays, in steps; each later one doubles, up to
/// [`LONGEST_PAUSE`].
const FIRST_PAUSE: u32 = 4;
/// The longest pause.
const LONGEST_PAUSE: u32 = 64;

impl Adaptive {
    /// A sequence that may draft up to `max` tokens a step.
    pub fn new(max: usize) -> Self {
        Adaptive {
            estimate: Estimate::new(PRIOR),
            pause: 0,
            next_pause: FIRST_PAUSE,
            probe: true,
            max: max.max(1),
        }
    }

    /// The estimated probability that a draft token is accepted after the previous one was.
    pub fn alpha(&self) -> f32 {
        self.estimate.alpha()
    }

    /// How many draft tokens this step may propose for the sequence, with `generating`
    /// sequences in the step: 0 while it pauses (the pause counts down); otherwise the length
    /// that pays best ([`best_draft_len`]). When none pays, a pause starts; after it the
    /// estimate restarts from the prior and a one-token probe finds out whether the text has
    /// become predictable again.
    pub fn allowance(&mut self, generating: usize, cost: f32, draft_cost: f32) -> usize {
        if self.pause > 0 {
            self.pause -= 1;
            if self.pause == 0 {
                self.estimate = Estimate::new(PRIOR);
                self.probe = true;
            }
            return 0;
        }
        let k = best_draft_len(self.alpha(), generating, self.max, cost, draft_cost);
        if std::mem::take(&mut self.probe) {
            return k.min(1);
        }
        if k == 0 && generating <= 1 {
            // Even alone nothing pays: stop looking for a while.
            self.pause = self.next_pause;
            self.next_pause = (self.next_pause * 2).min(LONGEST_PAUSE);
        }
        k
    }

    /// Records a verification: `drafted` tokens proposed, `accepted` of them taken (a prefix).
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        self.estimate.record(drafted, accepted);
        if accepted * 2 >= drafted {
            self.next_pause = FIRST_PAUSE;
        }
    }
}

/// Prompt-lookup drafting state: one acceptance estimate per class of agreement between the
/// history and the occurrence the draft comes from ([`Found::context`]: up to 3 tokens, 4 to
/// 7, 8 and more). A draft found after a long agreement (a verbatim copy under way) is
/// accepted far more often than one found after two common tokens, so one estimate for both
/// would draft too long after short matches and too short during copies.
///
/// A lookup costs nothing to make, so a proposal that is not verified (because at the current
/// estimate it would not pay) is still judged: it is kept as a *shadow* and compared with the
/// tokens the sequence goes on to produce, and the outcome updates its class's estimate as a
/// verified draft would. The estimate therefore follows the text whether or not the sequence
/// drafts, with no probing drafts and no pauses (what [`Adaptive`], which a draft model's
/// costly proposals need, does instead). Measured on the benchmark's greedy outputs against
/// probing: the worst prompt without a long copy went from 0.87× to 0.98× of not drafting.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup<T> {
    /// The acceptance estimate of each class.
    classes: [Estimate; 3],
    /// The class of the draft being verified, which [`Lookup::record`] updates.
    last: Option<usize>,
    /// An unverified proposal: its class, where in the history it starts, its tokens, and
    /// how many of them came true so far.
    shadow: Option<(usize, usize, Vec<T>, usize)>,
    max: usize,
}

/// A lookup draft is at most as long as its occurrence agreed with the history, and at least
/// this long: a copy that has gone on for m tokens is likely to go on for about as many more,
/// and drafts past that point mostly pay for rejected tokens (measured on the benchmark's
/// greedy outputs: with `draft-max` 32, the rule kept prompts without a long copy within 0.96×
/// of not drafting, where drafting the whole allowance fell to 0.87×).
pub const SHORTEST_CAP: usize = 8;

/// The estimates the classes start from, with the weight of two verified tokens: 60%
/// acceptance after agreements of up to 3 tokens, 80% after 4–7, 90% after 8 and more (a copy
/// under way, or a repeated answer, drafts at once). Shadows correct them within a few steps
/// at no cost.
const LOOKUP_PRIOR: [(f32, f32); 3] = [(1.2, 2.0), (1.6, 2.0), (1.8, 2.0)];

/// Most tokens of a shadow compared (a longer one would take long to judge).
const SHADOW_LEN: usize = 8;

impl<T: PartialEq + Copy> Lookup<T> {
    /// A sequence that may draft up to `max` tokens a step.
    pub fn new(max: usize) -> Self {
        Lookup {
            classes: LOOKUP_PRIOR.map(Estimate::new),
            last: None,
            shadow: None,
            max: max.max(1),
        }
    }

    /// The class of an agreement of `context` tokens.
    pub fn class(context: usize) -> usize {
        match context {
            0..=3 => 0,
            4..=7 => 1,
            _ => 2,
        }
    }

    /// Compares the pending shadow with `history` (the sequence's tokens so far, its sampled
    /// one included) and counts what it shows in its class as a verification would, token by
    /// token as they come (so that a copy starts drafting after a few true tokens): each one
    /// that came true as accepted, the first that differs as rejected, which ends the shadow,
    /// as does its last token.
    pub fn observe(&mut self, history: &[T]) {
        let Some((class, at, tokens, judged)) = &mut self.shadow else {
            return;
        };
        let seen = history.len().saturating_sub(*at).min(tokens.len());
        let agree = (*judged..seen)
            .take_while(|&j| history[*at + j] == tokens[j])
            .count();
        let wrong = *judged + agree < seen;
        let (first, class) = (*judged == 0, *class);
        *judged += agree;
        if wrong || *judged == tokens.len() {
            self.shadow = None;
        }
        if agree > 0 || wrong {
            // One decay a shadow, as a verified draft gets one.
            let estimate = &mut self.classes[class];
            if first {
                estimate.decay();
            }
            estimate.count(agree, usize::from(wrong));
        }
    }

    /// How many tokens of the lookup `found` (its draft to follow position `at` of the
    /// history) to verify this step, with `generating` sequences in the step: the length that
    /// pays best at its class's estimate ([`best_draft_len`]), within [`SHORTEST_CAP`]'s rule.
    /// When none pays and no shadow is pending, the proposal becomes the shadow.
    pub fn allowance(
        &mut self,
        found: &Found<T>,
        at: usize,
        generating: usize,
        cost: f32,
    ) -> usize {
        let class = Self::class(found.context);
        let k = best_draft_len(self.classes[class].alpha(), generating, self.max, cost, 0.0)
            .min(found.context.max(SHORTEST_CAP))
            .min(found.draft.len());
        if k > 0 {
            // A real draft is judged by its verification; a pending shadow would be compared
            // with tokens that the draft decides.
            self.shadow = None;
            self.last = Some(class);
        } else {
            self.last = None;
            if self.shadow.is_none() && !found.draft.is_empty() {
                let n = found.draft.len().min(SHADOW_LEN);
                self.shadow = Some((class, at, found.draft[..n].to_vec(), 0));
            }
        }
        k
    }

    /// Records the verification of the last draft: `drafted` tokens, `accepted` of them.
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        if let Some(class) = self.last.take() {
            self.classes[class].record(drafted, accepted);
        }
    }

    /// The estimated acceptance of class `class`.
    pub fn alpha(&self, class: usize) -> f32 {
        self.classes[class.min(2)].alpha()
    }
}

/// Whether a step with `generating` sequences may carry drafts at all.
pub fn step_allows_drafts(generating: usize, max_batch: usize) -> bool {
    generating <= max_batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_proposes_what_followed_the_last_occurrence() {
        // "a b c d a b" → the suffix "a b" occurred at 0, followed by "c d a b".
        let h = [1, 2, 3, 4, 1, 2];
        assert_eq!(propose_ngram(&h, 2, 4, 8), vec![3, 4, 1, 2]);
        assert_eq!(propose_ngram(&h, 2, 4, 2), vec![3, 4]);
        // Nothing matches.
        assert!(propose_ngram(&[1, 2, 3, 4], 2, 4, 8).is_empty());
        // Too short a history for any n-gram with a continuation.
        assert!(propose_ngram(&[7], 1, 4, 8).is_empty());
        assert!(propose_ngram::<i32>(&[], 1, 4, 8).is_empty());
        // max 0 proposes nothing.
        assert!(propose_ngram(&h, 2, 4, 0).is_empty());
    }

    #[test]
    fn ngram_prefers_the_longest_suffix_then_the_latest_occurrence() {
        // Suffix "9 1 2": the 3-gram occurs at 4 (followed by 5); the 2-gram "1 2" alone
        // occurs later at 7 (followed by 6), but the longer match wins.
        let h = [0, 0, 0, 0, 9, 1, 2, 5, 1, 2, 6, 9, 1, 2];
        assert_eq!(propose_ngram(&h, 2, 3, 1), vec![5]);
        // Only bigrams allowed: of the two earlier "1 2", the one preceded by 9 as the suffix
        // is (at 5) agrees for longer than the later one (at 8), and wins.
        assert_eq!(propose_ngram(&h, 2, 2, 2), vec![5, 1]);
        let f = lookup(&[], &h, 2, 2, 2);
        assert_eq!((f.matched, f.context), (2, 3));
        // Equal agreement: the latest occurrence wins.
        let h = [1, 2, 5, 1, 2, 6, 1, 2];
        assert_eq!(propose_ngram(&h, 2, 2, 1), vec![6]);
        // Below ngram-min nothing is tried: "2" alone occurs often, but min is 2 and "x 2"
        // never repeats.
        let h = [1, 2, 3, 2, 4, 5, 2];
        assert!(propose_ngram(&h, 2, 3, 4).is_empty());
        assert_eq!(propose_ngram(&h, 1, 3, 2), vec![4, 5]);
    }

    #[test]
    fn lookup_finds_the_earlier_answer_of_a_repeated_request() {
        // The previous request's continuation after the shared prefix: "7 8 9 1 2 3 4".
        let earlier = [7, 8, 9, 1, 2, 3, 4];
        // This request has generated "7 8 9" so far, after a prompt that also holds "9 1 5".
        let history = [0, 9, 1, 5, 7, 8, 9, 1];
        let f = lookup(&earlier, &history, 2, 4, 8);
        // "9 1" occurs in the prompt (followed by 5) and in the earlier answer; the earlier
        // answer agrees back to "7 8 9 1" and wins, its continuation running to its end.
        assert_eq!(f.draft, vec![2, 3, 4]);
        assert_eq!((f.matched, f.context), (4, 4));
        // Without it, the prompt's occurrence is all there is.
        assert_eq!(lookup(&[], &history, 2, 4, 8).draft, vec![5, 7, 8, 9, 1]);
        // The agreement is measured up to CONTEXT tokens.
        let long: Vec<u32> = (0..200).collect();
        let mut again = long[..100].to_vec();
        again.insert(0, 999);
        let f = lookup(&long, &again, 4, 12, 8);
        assert_eq!(
            (f.draft, f.matched, f.context),
            ((100..108).collect(), 12, CONTEXT)
        );
    }

    #[test]
    fn a_repeating_run_proposes_its_continuation_up_to_the_end_of_the_text() {
        // The last occurrence overlaps the suffix: proposals stop at the end of what exists.
        let h = [5, 5, 5, 5];
        assert_eq!(propose_ngram(&h, 2, 2, 8), vec![5]);
    }

    #[test]
    fn verification_accepts_the_drafts_the_model_agrees_with_and_emits_its_own_token() {
        let model = [10, 11, 12, 13, 14];
        // All of the draft agrees: every draft token and one more of the model's.
        let (e, a) = verify(&[10, 11, 12], |j| Some(model[j]));
        assert_eq!((e, a), (vec![10, 11, 12, 13], 3));
        // The second draft token is wrong: the model's token replaces it, nothing after it.
        let (e, a) = verify(&[10, 99, 12], |j| Some(model[j]));
        assert_eq!((e, a), (vec![10, 11], 1));
        // The first is wrong.
        let (e, a) = verify(&[99], |j| Some(model[j]));
        assert_eq!((e, a), (vec![10], 0));
        // No draft: one token, as without speculation.
        let (e, a) = verify(&[], |j| Some(model[j]));
        assert_eq!((e, a), (vec![10], 0));
        // The sequence ends at position 1 (end of text): nothing is drawn after it.
        let mut drawn = 0;
        let (e, a) = verify(&[10, 11, 12], |j| {
            drawn += 1;
            (j < 1).then_some(model[j])
        });
        assert_eq!((e, a, drawn), (vec![10], 1, 2));
    }

    /// A small seeded generator for the statistical checks (xorshift).
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
        fn draw(&mut self, p: &[f64]) -> usize {
            let u = self.uniform();
            let mut acc = 0.0;
            for (i, &pi) in p.iter().enumerate() {
                acc += pi;
                if u < acc {
                    return i;
                }
            }
            p.len() - 1
        }
    }

    #[test]
    fn sampling_through_verification_keeps_the_model_distribution() {
        // Two positions with known distributions; the draft proposes token 1 then token 0.
        // Without speculation the first two tokens are drawn from p0 and p1[first]; through
        // verification they must be distributed the same way, and the draft's first token must
        // be accepted with probability p0(1) (the rejection rule with a point-mass draft).
        let p0 = [0.2, 0.5, 0.3];
        let p1 = [[0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]];
        let runs = 200_000;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut freq = [[0u32; 3]; 3];
        let mut accepted_first = 0;
        for _ in 0..runs {
            let mut first = None;
            let (e, a) = verify(&[1, 0], |j| match j {
                0 => {
                    let x = rng.draw(&p0);
                    first = Some(x);
                    Some(x)
                }
                1 => Some(rng.draw(&p1[first.expect("drawn at 0")])),
                _ => None,
            });
            let second = match e.get(1) {
                Some(&x) => x,
                // Rejected at 0: the next token is drawn in the next step, from the same
                // conditional distribution.
                None => rng.draw(&p1[e[0]]),
            };
            freq[e[0]][second] += 1;
            accepted_first += usize::from(a >= 1);
        }
        // Tolerance: 5 standard deviations of a binomial proportion at n = 200,000 is at most
        // 5 × sqrt(0.25 / 200,000) ≈ 0.0056; 0.006 is used.
        for (i, row) in p1.iter().enumerate() {
            for (j, &pj) in row.iter().enumerate() {
                let seen = f64::from(freq[i][j]) / f64::from(runs);
                let want = p0[i] * pj;
                assert!((seen - want).abs() < 0.006, "({i},{j}): {seen} vs {want}");
            }
        }
        let rate = accepted_first as f64 / f64::from(runs);
        assert!(
            (rate - p0[1]).abs() < 0.006,
            "acceptance {rate} vs {}",
            p0[1]
        );
    }

    #[test]
    fn the_draft_length_follows_acceptance_and_the_batch() {
        // Expected tokens a step: 1 + α + α² + …
        assert!((expected_tokens(0.5, 2) - 1.75).abs() < 1e-6);
        assert_eq!(expected_tokens(0.9, 0), 1.0);
        // Alone: a predictable text drafts long, a so-so one short, an unpredictable one not.
        assert_eq!(best_draft_len(0.99, 1, 8, TOKEN_COST, 0.0), 8);
        let mid = best_draft_len(0.95, 1, 16, TOKEN_COST, 0.0);
        assert!((4..=12).contains(&mid), "{mid}");
        // On a CPU a so-so text does not pay.
        assert_eq!(best_draft_len(0.7, 1, 8, TOKEN_COST, 0.0), 0);
        assert_eq!(best_draft_len(0.3, 1, 8, TOKEN_COST, 0.0), 0);
        // At no cost, anything accepted at all drafts draft-max.
        assert_eq!(best_draft_len(0.3, 8, 8, 0.0, 0.0), 8);
        assert_eq!(best_draft_len(0.0, 1, 8, 0.0, 0.0), 0);
        // The same acceptance pays less as the batch grows: every sequence pays the cost.
        assert!(
            best_draft_len(0.95, 4, 16, TOKEN_COST, 0.0)
                < best_draft_len(0.95, 1, 16, TOKEN_COST, 0.0)
        );
        assert_eq!(best_draft_len(0.8, 16, 8, TOKEN_COST, 0.0), 0);
        // A draft model's own decodes count: at a third of the target's, a 90% draft that
        // pays with prompt lookup's costs does not pay.
        assert!(best_draft_len(0.97, 1, 16, TOKEN_COST, 0.0) > 0);
        assert_eq!(best_draft_len(0.97, 1, 16, TOKEN_COST, 0.35), 0);
        assert!(best_draft_len(0.97, 1, 16, 0.1, 0.05) > 0);
        // Never beyond draft-max.
        assert_eq!(best_draft_len(1.0, 1, 3, TOKEN_COST, 0.0), 3);
    }

    #[test]
    fn drafting_adapts_per_sequence_and_pauses_when_nothing_pays() {
        let mut a = Adaptive::new(8);
        // The first draft is a one-token probe; accepted, the prior (95%) drafts long.
        assert_eq!(a.allowance(1, TOKEN_COST, 0.0), 1);
        a.record(1, 1);
        let first = a.allowance(1, TOKEN_COST, 0.0);
        assert!((2..=8).contains(&first), "{first}");
        // Everything accepted: the estimate rises, the draft grows to draft-max.
        for _ in 0..6 {
            let k = a.allowance(1, TOKEN_COST, 0.0);
            a.record(k, k);
        }
        assert_eq!(a.allowance(1, TOKEN_COST, 0.0), 8);
        // Rejections at the first token: the estimate falls until nothing pays, then a pause
        // of 4 steps.
        let mut steps = 0;
        loop {
            let k = a.allowance(1, TOKEN_COST, 0.0);
            if k == 0 {
                break;
            }
            a.record(k, 0);
            steps += 1;
            assert!(steps < 20);
        }
        assert_eq!(a.pause, 4);
        for _ in 0..4 {
            assert_eq!(a.allowance(1, TOKEN_COST, 0.0), 0);
        }
        // After the pause, a probe from the prior; failing again pauses twice as long.
        let k = a.allowance(1, TOKEN_COST, 0.0);
        assert!(k >= 1);
        a.record(k, 0);
        a.record(1, 0);
        while a.allowance(1, TOKEN_COST, 0.0) > 0 {
            a.record(1, 0);
        }
        assert_eq!(a.pause, 8);
    }

    fn found(draft: &[u32], context: usize) -> Found<u32> {
        Found {
            draft: draft.to_vec(),
            matched: context.min(12),
            context,
        }
    }

    #[test]
    fn lookup_judges_long_matches_apart_from_short_ones() {
        let mut l = Lookup::new(16);
        assert_eq!(
            (
                Lookup::<u32>::class(2),
                Lookup::<u32>::class(5),
                Lookup::<u32>::class(12)
            ),
            (0, 1, 2)
        );
        let d16: Vec<u32> = (100..116).collect();
        // At the 80% prior nothing pays on a CPU: the proposal after a two-token match is
        // not verified but kept as a shadow; the text goes elsewhere each time and the
        // estimate falls, with nothing spent.
        let mut history = Vec::new();
        for _ in 0..5 {
            assert_eq!(
                l.allowance(&found(&d16, 2), history.len(), 1, TOKEN_COST),
                0
            );
            history.push(1);
            l.observe(&history);
        }
        assert!(l.alpha(0) < 0.5, "{}", l.alpha(0));
        // A copy (twelve-token agreement) drafts at once from its 95% prior, and drafts longer
        // as its drafts are accepted whole.
        let first = l.allowance(&found(&d16, 12), history.len(), 1, TOKEN_COST);
        assert!(first > 0, "a copy does not draft");
        l.record(first, first);
        for _ in 0..10 {
            let k = l.allowance(&found(&d16, 12), history.len(), 1, TOKEN_COST);
            l.record(k, k);
        }
        let later = l.allowance(&found(&d16, 12), history.len(), 1, TOKEN_COST);
        assert!(later > first && l.alpha(2) > 0.9, "{first} then {later}");
        assert!(l.alpha(0) < 0.5, "the classes are apart");
        // A draft is no longer than its occurrence agreed, and may always be SHORTEST_CAP,
        // nor longer than what was found.
        let d40: Vec<u32> = (0..40).collect();
        let mut free = Lookup::new(32);
        assert_eq!(free.allowance(&found(&d40, 5), 0, 1, 0.0), SHORTEST_CAP);
        assert_eq!(free.allowance(&found(&d40, 20), 0, 1, 0.0), 20);
        assert_eq!(free.allowance(&found(&d40, CONTEXT), 0, 1, 0.0), 32);
        assert_eq!(free.allowance(&found(&d40[..3], CONTEXT), 0, 1, 0.0), 3);
    }

    #[test]
    fn an_unverified_proposal_is_judged_by_what_the_sequence_produces() {
        let mut l = Lookup::new(16);
        let d: Vec<u32> = (1..=16).collect();
        // A class whose drafts have failed...
        l.classes[0] = Estimate::new((0.4, 2.0));
        let low = l.alpha(0);
        assert_eq!(l.allowance(&found(&d, 2), 10, 1, TOKEN_COST), 0);
        // ...the proposal it did not verify (tokens 1..=8 after position 10) became the
        // shadow; the sequence then produces them one by one, and each one that comes true
        // counts as an accepted token, until the shadow's end.
        let mut history: Vec<u32> = vec![0; 10];
        let mut last = low;
        for t in 1..=8 {
            assert!(l.shadow.is_some());
            history.push(t);
            l.observe(&history);
            assert!(l.alpha(0) > last, "token {t} did not count");
            last = l.alpha(0);
        }
        assert_eq!(l.shadow, None);
        assert!(l.alpha(0) > low + 0.2, "{low} → {}", l.alpha(0));
        // A shadow that goes wrong at its third token counts two accepted and one rejected.
        let mut l2 = Lookup::new(16);
        l2.classes[0] = Estimate::new((0.2, 2.0));
        assert_eq!(l2.allowance(&found(&d, 2), 4, 1, TOKEN_COST), 0);
        let mut history: Vec<u32> = vec![0; 4];
        history.extend([1, 2]);
        l2.observe(&history);
        history.push(99);
        l2.observe(&history);
        // Observed again with nothing new: nothing more counts.
        l2.observe(&history);
        let Estimate { hits: h, trials: t } = l2.classes[0];
        assert!((h - (0.2 * DECAY + 2.0)).abs() < 1e-6 && (t - (2.0 * DECAY + 3.0)).abs() < 1e-6);
        assert_eq!(l2.shadow, None);
        // Only one shadow at a time, and a real draft drops it.
        let mut l3 = Lookup::new(16);
        l3.classes[0] = Estimate::new((0.4, 2.0));
        l3.classes[2] = Estimate::new((2.0, 2.0));
        l3.allowance(&found(&d, 2), 0, 1, TOKEN_COST);
        let pending = l3.shadow.clone();
        l3.allowance(&found(&[7, 7], 2), 5, 1, TOKEN_COST);
        assert_eq!(l3.shadow, pending);
        assert!(l3.allowance(&found(&d, 12), 5, 1, TOKEN_COST) > 0);
        assert_eq!(l3.shadow, None);
    }

    #[test]
    fn large_batches_carry_no_drafts() {
        assert!(step_allows_drafts(1, 4));
        assert!(step_allows_drafts(4, 4));
        assert!(!step_allows_drafts(5, 4));
    }

    #[test]
    fn config_resolves_overrides_and_checks_ranges() {
        let c: SpeculativeConfig = toml::from_str(
            "mode = \"ngram\"\ndraft-max = 6\n[drafts]\nbig = \"small\"\n\
             [models.big]\nmode = \"draft\"\n[models.quiet]\nmode = \"off\"\nngram-min = 3\n",
        )
        .unwrap();
        c.check().unwrap();
        let s = c.for_model("smol");
        assert_eq!(
            (s.mode, s.draft_max, s.ngram_min),
            (Mode::Ngram, 6, DEFAULT_NGRAM_MIN as usize)
        );
        let b = c.for_model("big+lora");
        assert_eq!((b.mode, b.draft.as_deref()), (Mode::Draft, Some("small")));
        assert_eq!(c.for_model("quiet").mode, Mode::Off);
        assert_eq!(c.for_model("quiet").ngram_min, 3);
        assert_eq!(SpeculativeConfig::default().for_model("x").mode, Mode::Off);

        let err = |t: &str| {
            let c: SpeculativeConfig = toml::from_str(t).unwrap();
            c.check().unwrap_err()
        };
        assert!(err("draft-max = 0").contains("draft-max"));
        assert!(err("verify-cost = -1.0").contains("verify-cost"));
        assert!(err("draft-cost = 3.0").contains("draft-cost"));
        assert_eq!(c.for_model("smol").draft_cost, None);
        let c2: SpeculativeConfig =
            toml::from_str("draft-cost = 0.25\n[models.x]\ndraft-cost = 0.5\n").unwrap();
        c2.check().unwrap();
        assert_eq!(
            (c2.for_model("x").draft_cost, c2.for_model("y").draft_cost),
            (Some(0.5), Some(0.25))
        );
        assert_eq!(c.for_model("smol").verify_cost, TOKEN_COST);
        assert!(err("ngram-min = 5\nngram-max = 3").contains("ngram-min"));
        assert!(err("[models.x]\ndraft-max = 99").contains("speculative.models.x"));
        assert!(err("mode = \"draft\"").contains("[speculative.drafts]"));
        assert!(err("[models.x]\nmode = \"draft\"").contains("x = \"DRAFT-MODEL\""));
        assert!(toml::from_str::<SpeculativeConfig>("mode = \"eagle\"").is_err());
        assert!(toml::from_str::<SpeculativeConfig>("draft_max = 3").is_err());
        // The top-level draft mode leaves a model without a draft (the draft itself) plain.
        let c: SpeculativeConfig =
            toml::from_str("mode = \"draft\"\n[drafts]\ncoder = \"small\"\n").unwrap();
        assert_eq!(c.for_model("coder").mode, Mode::Draft);
        assert_eq!(c.for_model("small").mode, Mode::Off);
    }
}
