//! A [`Hub`] (or any [`Core`] around one) with its [`MemorySequencer`]
//! answering in-process: what a roomhub node without a store runs, and what
//! tests drive.

use crate::config::Config;
use crate::event::{Input, Output};
use crate::hub::Hub;
use crate::machine::Core;
use crate::sequencer::{HistoryLimits, MemorySequencer};
use crate::time::Timestamp;

pub struct SingleNode<C = Hub> {
    pub hub: C,
    pub sequencer: MemorySequencer,
    /// Outputs for the shell: sends, pings and closes.
    ready: std::collections::VecDeque<Output>,
    feedback: Vec<Input>,
}

impl SingleNode<Hub> {
    /// `sequencer_seed` decides room epochs; a process should use a fresh
    /// one each start so history lineages from before a restart are never
    /// mistaken for current ones.
    pub fn new(config: Config, sequencer_seed: u64) -> Self {
        SingleNode::with_core(Hub::new(config), sequencer_seed)
    }
}

impl<C: Core> SingleNode<C> {
    /// A node driving `core`, its history limits from the core's config.
    pub fn with_core(core: C, sequencer_seed: u64) -> Self {
        let limits = HistoryLimits::from_config(core.hub().config());
        SingleNode {
            hub: core,
            sequencer: MemorySequencer::new(sequencer_seed, limits),
            ready: Default::default(),
            feedback: Vec::new(),
        }
    }

    /// Feeds one input and settles every sequencer round trip it causes.
    pub fn handle(&mut self, input: Input, now: Timestamp) {
        self.hub.handle(input, now);
        // Each round answers appends and opens; answers only produce sends,
        // so this ends after a few rounds.
        loop {
            while let Some(out) = self.hub.poll_output() {
                if !self.sequencer.serve(&out, now, &mut self.feedback) {
                    self.ready.push_back(out);
                }
            }
            if self.feedback.is_empty() {
                break;
            }
            for input in std::mem::take(&mut self.feedback) {
                self.hub.handle(input, now);
            }
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.ready.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.hub.poll_timeout()
    }
}
