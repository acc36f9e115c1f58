//! Draft-model speculation: a smaller model with the target's vocabulary proposes each
//! speculating sequence's next tokens greedily. It runs on the target's engine thread, with a
//! context of its own holding one KV sequence per target slot; each slot's draft sequence keeps
//! the tokens it has computed, so a step only decodes what the target accepted since the last
//! one (usually one or two tokens) before drafting.

use super::scheduler::common_prefix;
use super::EngineError;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

/// Checks that `draft` can draft for `target`: the same number of tokens, and the same bytes
/// for every one of them (special tokens included), so that a token id means the same text to
/// both. The message names both models and the first difference.
pub fn check_same_vocabulary(
    target_name: &str,
    target: &LlamaModel,
    draft_name: &str,
    draft: &LlamaModel,
) -> Result<(), String> {
    let (nt, nd) = (target.n_vocab(), draft.n_vocab());
    if nt != nd {
        return Err(format!(
            "the draft model {draft_name:?} has another vocabulary than {target_name:?} \
             ({nd} tokens against {nt}); a draft model must use the target's tokenizer"
        ));
    }
    let (vt, vd) = (target.vocab(), draft.vocab());
    for id in 0..nt {
        let t = LlamaToken(id);
        if vt.token_to_piece(t, true, None) != vd.token_to_piece(t, true, None) {
            return Err(format!(
                "the draft model {draft_name:?} has another vocabulary than {target_name:?} \
                 (token {id} differs); a draft model must use the target's tokenizer"
            ));
        }
    }
    if vt.bos() != vd.bos() || vt.eos() != vd.eos() {
        return Err(format!(
            "the draft model {draft_name:?} has other BOS/EOS tokens than {target_name:?}"
        ));
    }
    Ok(())
}

/// The draft model's context and what each of its sequences holds.
pub struct DraftRunner<'m> {
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    /// Per target slot: the tokens the draft's sequence holds, in position order.
    held: Vec<Vec<LlamaToken>>,
    n_batch: usize,
    model: &'m LlamaModel,
}

impl<'m> DraftRunner<'m> {
    /// A runner over `ctx` (one sequence per slot), decoding at most `n_batch` tokens at once.
    pub fn new(model: &'m LlamaModel, ctx: LlamaContext<'m>, slots: usize, n_batch: usize) -> Self {
        DraftRunner {
            ctx,
            batch: LlamaBatch::new(n_batch, 1),
            held: vec![Vec::new(); slots],
            n_batch,
            model,
        }
    }

    /// Forgets what slot `slot` holds after its first `keep` tokens (a new request took the
    /// slot: its draft sequence keeps the same reused prefix as the target's, no more).
    pub fn forget_after(&mut self, slot: usize, keep: usize) {
        let held = &mut self.held[slot];
        if held.len() > keep {
            let ok = self
                .ctx
                .clear_kv_cache_seq(Some(slot as u32), Some(keep as u32), None)
                .unwrap_or(false);
            if ok {
                held.truncate(keep);
            } else {
                let _ = self.ctx.clear_kv_cache_seq(Some(slot as u32), None, None);
                held.clear();
            }
        }
    }

    /// Greedy drafts: for each `(slot, history, want)`, up to `want` tokens the draft model
    /// predicts after `history` (the target sequence's tokens and its sampled next token).
    /// Generation rounds decode every drafting sequence together. A failed decode drafts
    /// nothing for that step (the target then decodes as without speculation).
    pub fn propose(
        &mut self,
        asks: &[(usize, &[LlamaToken], usize)],
    ) -> Result<Vec<Vec<LlamaToken>>, EngineError> {
        let inference = |e: llama_cpp_2::DecodeError| EngineError::Inference(e.to_string());
        let mut out = vec![Vec::new(); asks.len()];
        // The sequences still drafting: (ask index, slot, batch index of their logits).
        let mut live: Vec<(usize, usize, i32)> = Vec::new();
        for (k, &(slot, history, want)) in asks.iter().enumerate() {
            if want == 0 || history.is_empty() {
                continue;
            }
            // Catch up: keep the common prefix (all but at least the last token, whose logits
            // give the first draft token), decode the rest in chunks.
            let common = common_prefix(&self.held[slot], history).min(history.len() - 1);
            self.forget_after(slot, common);
            let from = self.held[slot].len();
            let mut at = from;
            while at < history.len() {
                let end = (at + self.n_batch).min(history.len());
                self.batch.clear();
                for (p, &t) in history.iter().enumerate().take(end).skip(at) {
                    let last = p + 1 == history.len();
                    let _ = self.batch.add(t, p as i32, &[slot as i32], last);
                }
                self.ctx.decode(&mut self.batch).map_err(inference)?;
                self.held[slot].extend_from_slice(&history[at..end]);
                at = end;
            }
            let first = self.argmax(self.batch.n_tokens() - 1);
            out[k].push(first);
            if out[k].len() < want && !self.model.vocab().is_eog(first) {
                live.push((k, slot, 0));
            }
        }
        while !live.is_empty() {
            self.batch.clear();
            for (j, entry) in live.iter_mut().enumerate() {
                let (k, slot, _) = *entry;
                let t = *out[k].last().expect("drafted one");
                let pos = self.held[slot].len() as i32;
                let _ = self.batch.add(t, pos, &[slot as i32], true);
                self.held[slot].push(t);
                entry.2 = j as i32;
            }
            self.ctx.decode(&mut self.batch).map_err(inference)?;
            let mut next = Vec::with_capacity(live.len());
            for (k, slot, idx) in live {
                let t = self.argmax(idx);
                out[k].push(t);
                if out[k].len() < asks[k].2 && !self.model.vocab().is_eog(t) {
                    next.push((k, slot, 0));
                }
            }
            live = next;
        }
        Ok(out)
    }

    /// After a failed decode of the target nothing is trusted: every sequence starts afresh.
    pub fn clear(&mut self) {
        for (slot, held) in self.held.iter_mut().enumerate() {
            let _ = self.ctx.clear_kv_cache_seq(Some(slot as u32), None, None);
            held.clear();
        }
    }

    /// The most likely token at batch index `idx` (the first of equal ones).
    fn argmax(&self, idx: i32) -> LlamaToken {
        let logits = self.ctx.get_logits_ith(idx);
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        LlamaToken(best as i32)
    }
}
