//! The scheduler: picks each step's work for continuous batching. Its rules are free of
//! llama.cpp so they can be unit-tested; the engine thread ([`super::llama`]) executes them:
//! which waiting request is admitted next ([`FairQueue`]), which slot (KV-cache sequence) it
//! gets ([`choose_slot`]), and which sequences read how much of their prompt in a step
//! ([`plan_prefill`]).
//!
//! - Admission is round-robin across callers (uids): a caller with fifty queued requests gets
//!   one slot per turn like everyone else, so one busy user cannot starve the department.
//! - A slot keeps the tokens its sequence holds in the KV cache, and whose they are, after its
//!   request ends. A new request from the same owner that starts with a slot's tokens reuses
//!   that prefix; only the rest is computed. Across owners nothing is reused unless the config
//!   allows it: a cached prefix reveals, by timing, what someone else asked.

use std::collections::{BTreeMap, VecDeque};

/// Waiting requests, one FIFO per caller, served round-robin across callers.
#[derive(Debug)]
pub struct FairQueue<T> {
    by_uid: BTreeMap<u32, VecDeque<T>>,
    /// The caller served last; the next turn goes to the next uid after it.
    last: Option<u32>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            by_uid: BTreeMap::new(),
            last: None,
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    /// Queues `item` for caller `uid`.
    pub fn push(&mut self, uid: u32, item: T) {
        self.by_uid.entry(uid).or_default().push_back(item);
        self.len += 1;
    }

    /// The caller whose turn is next.
    fn next_uid(&self) -> Option<u32> {
        match self.last {
            Some(last) => self
                .by_uid
                .range(last.saturating_add(1)..)
                .next()
                .or_else(|| self.by_uid.iter().next())
                .map(|(u, _)| *u),
            None => self.by_uid.keys().next().copied(),
        }
    }

    /// The request [`FairQueue::pop`] would return, left in the queue.
    pub fn peek(&self) -> Option<&T> {
        self.by_uid.get(&self.next_uid()?)?.front()
    }

    /// The next request: the oldest of the next caller in turn.
    pub fn pop(&mut self) -> Option<(u32, T)> {
        let uid = self.next_uid()?;
        let q = self.by_uid.get_mut(&uid)?;
        let item = q.pop_front()?;
        if q.is_empty() {
            self.by_uid.remove(&uid);
        }
        self.last = Some(uid);
        self.len -= 1;
        Some((uid, item))
    }

    /// Drops the requests `keep` rejects (clients that left while queued); returns how many.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> usize {
        let before = self.len;
        for q in self.by_uid.values_mut() {
            q.retain(&mut keep);
        }
        self.by_uid.retain(|_, q| !q.is_empty());
        self.len = self.by_uid.values().map(VecDeque::len).sum();
        before - self.len
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Length of the common prefix of two token sequences.
pub fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// What the slot chooser needs to know about a slot.
#[derive(Debug, Clone, Copy)]
pub struct SlotView<'a, T> {
    /// A request is running in it.
    pub busy: bool,
    /// Whose tokens the slot holds (`None`: empty).
    pub owner: Option<u32>,
    /// The tokens its sequence holds in the KV cache, in position order.
    pub tokens: &'a [T],
    /// When it was last used (larger is more recent).
    pub last_used: u64,
}

/// Where a new request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The slot.
    pub slot: usize,
    /// How many of the slot's cached tokens stay (the reused prefix); the rest is removed.
    pub keep: usize,
}

/// A shorter shared prefix than this is not worth evicting another slot's cache for when an
/// empty slot is free (a BOS token and a template header are shared by every chat).
pub const MIN_REUSE: usize = 16;

/// How many more reused prompt tokens make it worth placing a request where it splits the busy
/// slots into one more run. llama.cpp evaluates a batch over separate KV streams in runs of
/// consecutive sequence ids (`split_equal` with `sequential`), one graph per run: a gap costs
/// an extra pass over the weights at every step for the request's whole life (tens of steps),
/// while a reused prefix saves its prompt tokens once. Measured on SmolLM2 with 8 clients in 16
/// slots: scattered slots cost 17% of the aggregate rate.
pub const GAP_WORTH: usize = 128;

/// Chooses a free slot for `prompt` from `owner`, or `None` when all are busy.
///
/// Each free slot offers a reusable prefix: its cached tokens shared with the prompt, when they
/// are the same caller's (or sharing is configured) and at least [`MIN_REUSE`] long (any length
/// when no slot is empty). Among the slots whose prefix is within [`GAP_WORTH`] tokens of the
/// best one, the choice keeps the busy slots in as few runs of consecutive ids as possible, then
/// takes the longest prefix, then an empty slot over evicting a cache, then the least recently
/// used. At least the prompt's last two tokens are always recomputed: the last one's logits are
/// needed to sample the first answer token, and a prompt chunk of one token would run on
/// llama.cpp's one-token kernels, which round differently from the prompt kernels a cold run
/// uses.
pub fn choose_slot<T: PartialEq>(
    slots: &[SlotView<'_, T>],
    prompt: &[T],
    owner: u32,
    share_across_owners: bool,
) -> Option<Placement> {
    let max_keep = prompt.len().saturating_sub(2);
    let reusable = |s: &SlotView<'_, T>| s.owner == Some(owner) || share_across_owners;
    let any_empty = slots.iter().any(|s| !s.busy && s.tokens.is_empty());
    let keep_of = |s: &SlotView<'_, T>| {
        if !reusable(s) {
            return 0;
        }
        let n = common_prefix(s.tokens, prompt).min(max_keep);
        if n >= MIN_REUSE || !any_empty {
            n
        } else {
            0
        }
    };
    let free: Vec<(usize, usize)> = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.busy)
        .map(|(i, s)| (i, keep_of(s)))
        .collect();
    let best = free.iter().map(|&(_, k)| k).max()?;
    // Runs of consecutive busy ids once slot `i` is busy too.
    let runs_with = |i: usize| {
        let busy = |j: usize| j == i || slots[j].busy;
        (0..slots.len())
            .filter(|&j| busy(j) && (j == 0 || !busy(j - 1)))
            .count()
    };
    free.into_iter()
        .filter(|&(_, keep)| keep + GAP_WORTH >= best)
        .min_by_key(|&(i, keep)| {
            (
                runs_with(i),
                std::cmp::Reverse(keep),
                !slots[i].tokens.is_empty(),
                slots[i].last_used,
                i,
            )
        })
        .map(|(slot, keep)| Placement { slot, keep })
}

/// A sequence still reading its prompt, as the prefill planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefilling {
    /// Its slot.
    pub slot: usize,
    /// When it was admitted (its slot's `last_used`: larger is later).
    pub admitted: u64,
    /// Prompt tokens already in its KV cache (reused or prefilled in earlier steps).
    pub done: usize,
    /// Tokens of its whole prompt.
    pub prompt: usize,
}

/// One decode of prompt tokens planned for a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillChunk {
    /// The slot whose prompt is read.
    pub slot: usize,
    /// The first prompt position read.
    pub from: usize,
    /// How many tokens.
    pub len: usize,
}

/// Plans a step's prompt chunks, each its own decode after the step's generation decode.
///
/// The budget is `n_batch` tokens when nothing generates, and `prefill_chunk` while some
/// sequence does (`generating`), so that running streams keep getting a token per step while
/// a long prompt is read. Sequences are served oldest admission first, each as much of its
/// prompt as the budget leaves. No chunk is a single token unless it is a whole one-token
/// prompt: a chunk leaves at least two tokens for later, and when the budget leaves room for
/// one token only, the step's prefill ends there (a later sequence does not get it), so every
/// prompt token runs on the same kernels it would get alone (see
/// [`super::llama::serving_params`]). `prefill_chunk` must be at least 3 for a prompt to
/// always make progress.
pub fn plan_prefill(
    waiting: &[Prefilling],
    generating: bool,
    n_batch: usize,
    prefill_chunk: usize,
) -> Vec<PrefillChunk> {
    let mut left = if generating { prefill_chunk } else { n_batch };
    let mut order: Vec<&Prefilling> = waiting.iter().collect();
    // Stable: two sequences admitted at the same tick keep their slot order.
    order.sort_by_key(|w| w.admitted);
    let mut plan = vec![];
    for w in order {
        let remaining = w.prompt - w.done;
        let mut n = remaining.min(left);
        if remaining - n == 1 && n > 1 {
            n -= 1; // never leave a one-token chunk for later
        }
        if n == 0 || (n == 1 && remaining > 1) {
            break;
        }
        plan.push(PrefillChunk {
            slot: w.slot,
            from: w.done,
            len: n,
        });
        left -= n;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_round_robin_across_callers_and_fifo_within_one() {
        let mut q = FairQueue::default();
        for i in 0..3 {
            q.push(1000, format!("a{i}"));
        }
        q.push(1001, "b0".to_string());
        q.push(0, "r0".to_string());
        let order: Vec<String> = std::iter::from_fn(|| {
            let peeked = q.peek().cloned();
            let popped = q.pop().map(|(_, x)| x);
            assert_eq!(peeked, popped, "peek shows what pop returns");
            popped
        })
        .collect();
        assert_eq!(order, ["r0", "a0", "b0", "a1", "a2"]);
        assert!(q.is_empty());
    }

    #[test]
    fn queue_turn_continues_after_the_last_caller_served() {
        let mut q = FairQueue::default();
        q.push(5, 1);
        q.push(7, 2);
        assert_eq!(q.pop(), Some((5, 1)));
        q.push(5, 3);
        assert_eq!(q.pop(), Some((7, 2)));
        assert_eq!(q.pop(), Some((5, 3)));
    }

    #[test]
    fn retain_drops_cancelled_requests() {
        let mut q = FairQueue::default();
        q.push(1, 1);
        q.push(1, 2);
        q.push(2, 3);
        assert_eq!(q.retain(|x| *x != 2), 1);
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(), Some((1, 1)));
        assert_eq!(q.pop(), Some((2, 3)));
    }

    fn view(busy: bool, owner: Option<u32>, tokens: &[i32], last_used: u64) -> SlotView<'_, i32> {
        SlotView {
            busy,
            owner,
            tokens,
            last_used,
        }
    }

    #[test]
    fn same_owner_reuses_its_prefix_and_recomputes_the_last_token() {
        let cached: Vec<i32> = (0..40).collect();
        let prompt: Vec<i32> = (0..50).collect();
        let slots = [view(false, None, &[], 0), view(false, Some(7), &cached, 1)];
        assert_eq!(
            choose_slot(&slots, &prompt, 7, false),
            Some(Placement { slot: 1, keep: 40 })
        );
        // The same prompt again: everything but its last two tokens is reused.
        assert_eq!(
            choose_slot(&slots, &cached, 7, false),
            Some(Placement { slot: 1, keep: 38 })
        );
    }

    #[test]
    fn another_owner_never_reuses_unless_configured() {
        let cached: Vec<i32> = (0..40).collect();
        let prompt: Vec<i32> = (0..50).collect();
        let slots = [view(false, Some(7), &cached, 1), view(false, None, &[], 0)];
        assert_eq!(
            choose_slot(&slots, &prompt, 8, false),
            Some(Placement { slot: 1, keep: 0 })
        );
        let full = [view(false, Some(7), &cached, 1)];
        assert_eq!(
            choose_slot(&full, &prompt, 8, false),
            Some(Placement { slot: 0, keep: 0 })
        );
        assert_eq!(
            choose_slot(&slots, &prompt, 8, true),
            Some(Placement { slot: 0, keep: 40 })
        );
    }

    #[test]
    fn short_prefixes_do_not_evict_when_an_empty_slot_is_free() {
        let cached = [1, 2, 3, 9, 9];
        let prompt = [1, 2, 3, 4, 5];
        let slots = [view(false, Some(7), &cached, 1), view(false, None, &[], 0)];
        assert_eq!(
            choose_slot(&slots, &prompt, 7, false),
            Some(Placement { slot: 1, keep: 0 })
        );
        let no_empty = [view(false, Some(7), &cached, 1), view(true, None, &[], 0)];
        assert_eq!(
            choose_slot(&no_empty, &prompt, 7, false),
            Some(Placement { slot: 0, keep: 3 })
        );
    }

    #[test]
    fn least_recently_used_slot_is_evicted_and_busy_slots_are_never_chosen() {
        let a = [1, 1];
        let b = [2, 2];
        let slots = [
            view(false, Some(1), &a, 5),
            view(false, Some(2), &b, 3),
            view(true, None, &[], 0),
        ];
        assert_eq!(
            choose_slot(&slots, &[9, 9], 3, false),
            Some(Placement { slot: 1, keep: 0 })
        );
        let all_busy = [view(true, None, &a, 0)];
        assert_eq!(choose_slot(&all_busy, &[1], 3, false), None);
    }

    #[test]
    fn busy_slots_stay_contiguous_unless_a_long_prefix_is_worth_a_gap() {
        let short: Vec<i32> = (0..40).collect();
        let long: Vec<i32> = (0..400).collect();
        let prompt: Vec<i32> = (0..402).collect();
        // Slots 0 and 1 run; slot 2 is empty; slot 5 holds 40 tokens of the caller's prompt.
        let mut slots = vec![
            view(true, Some(1), &[], 9),
            view(true, Some(1), &[], 9),
            view(false, None, &[], 0),
            view(false, None, &[], 0),
            view(false, None, &[], 0),
            view(false, Some(7), &short, 1),
        ];
        assert_eq!(
            choose_slot(&slots, &prompt, 7, false),
            Some(Placement { slot: 2, keep: 0 })
        );
        // 400 reusable tokens are worth the gap.
        slots[5] = view(false, Some(7), &long, 1);
        assert_eq!(
            choose_slot(&slots, &prompt, 7, false),
            Some(Placement { slot: 5, keep: 400 })
        );
        // A gap is filled first: with 0 and 2 busy, slot 1 joins them into one run.
        let gap = [
            view(true, Some(1), &[], 9),
            view(false, Some(1), &[], 0),
            view(true, Some(1), &[], 9),
            view(false, None, &[], 0),
        ];
        assert_eq!(
            choose_slot(&gap, &[5, 5], 3, false),
            Some(Placement { slot: 1, keep: 0 })
        );
    }

    fn waiting(slot: usize, admitted: u64, done: usize, prompt: usize) -> Prefilling {
        Prefilling {
            slot,
            admitted,
            done,
            prompt,
        }
    }

    fn chunk(slot: usize, from: usize, len: usize) -> PrefillChunk {
        PrefillChunk { slot, from, len }
    }

    #[test]
    fn alone_a_prompt_reads_in_full_batches() {
        let w = [waiting(0, 1, 0, 1200)];
        assert_eq!(plan_prefill(&w, false, 512, 128), [chunk(0, 0, 512)]);
        let w = [waiting(0, 1, 1024, 1200)];
        assert_eq!(plan_prefill(&w, false, 512, 128), [chunk(0, 1024, 176)]);
        // A reused prefix is not read again.
        let w = [waiting(0, 1, 38, 40)];
        assert_eq!(plan_prefill(&w, false, 512, 128), [chunk(0, 38, 2)]);
        assert!(plan_prefill(&[], false, 512, 128).is_empty());
    }

    #[test]
    fn while_others_generate_a_step_reads_at_most_the_chunk() {
        let w = [waiting(2, 5, 0, 1000)];
        assert_eq!(plan_prefill(&w, true, 512, 128), [chunk(2, 0, 128)]);
        let w = [waiting(2, 5, 896, 1000)];
        assert_eq!(plan_prefill(&w, true, 512, 128), [chunk(2, 896, 104)]);
    }

    #[test]
    fn several_waiting_share_the_budget_oldest_admission_first() {
        let w = [
            waiting(0, 9, 0, 300),
            waiting(1, 3, 0, 100),
            waiting(3, 3, 10, 50),
        ];
        // Slot 1 and slot 3 were admitted at the same tick: slot order breaks the tie.
        assert_eq!(
            plan_prefill(&w, false, 512, 128),
            [chunk(1, 0, 100), chunk(3, 10, 40), chunk(0, 0, 300)]
        );
        // A smaller budget is spent in the same order; the youngest gets what is left.
        assert_eq!(
            plan_prefill(&w, true, 512, 200),
            [chunk(1, 0, 100), chunk(3, 10, 40), chunk(0, 0, 60)]
        );
    }

    #[test]
    fn no_chunk_leaves_a_single_token_for_later() {
        // 129 left with a budget of 128: reading 128 would leave one, so 127 now and 2 next.
        let w = [waiting(0, 1, 0, 129)];
        assert_eq!(plan_prefill(&w, true, 512, 128), [chunk(0, 0, 127)]);
        let w = [waiting(0, 1, 127, 129)];
        assert_eq!(plan_prefill(&w, true, 512, 128), [chunk(0, 127, 2)]);
        // The same rule when a prompt gets the rest of a shared budget.
        let w = [waiting(0, 1, 0, 100), waiting(1, 2, 0, 30)];
        assert_eq!(
            plan_prefill(&w, true, 512, 129),
            [chunk(0, 0, 100), chunk(1, 0, 28)]
        );
    }

    #[test]
    fn a_budget_of_one_token_ends_the_step_instead_of_a_one_token_chunk() {
        // After slot 0's 127 tokens one is left: slot 1 waits for the next step, and so does
        // slot 2 behind it, whose whole prompt is one token (no skipping ahead).
        let w = [
            waiting(0, 1, 0, 127),
            waiting(1, 2, 0, 50),
            waiting(2, 3, 0, 1),
        ];
        assert_eq!(plan_prefill(&w, true, 512, 128), [chunk(0, 0, 127)]);
        // A one-token prompt is read on its own when the budget reaches it.
        let w = [waiting(2, 3, 0, 1)];
        assert_eq!(plan_prefill(&w, true, 512, 128), [chunk(2, 0, 1)]);
        // An exhausted budget plans nothing more.
        let w = [waiting(0, 1, 0, 128), waiting(1, 2, 0, 50)];
        assert_eq!(plan_prefill(&w, true, 512, 128), [chunk(0, 0, 128)]);
    }

    #[test]
    fn the_smallest_chunk_always_makes_progress() {
        // With prefill_chunk = 3 (the least the config accepts) a prompt advances every step.
        let mut done = 0;
        let prompt = 10;
        let mut steps = 0;
        while done < prompt {
            let plan = plan_prefill(&[waiting(0, 1, done, prompt)], true, 512, 3);
            assert_eq!(plan.len(), 1, "stalled at {done}");
            assert!(plan[0].len >= 2, "{plan:?}");
            done += plan[0].len;
            steps += 1;
        }
        assert_eq!((done, steps), (10, 4));
    }
}
