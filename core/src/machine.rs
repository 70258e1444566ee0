//! The core's driving interface, as the shell sees it: facts in, outputs
//! out, the next deadline. [`Hub`] is the one implementation that ships; a
//! simulator may wrap it (to plant a defect and prove its checker finds
//! it) without the shell, or the binary, knowing.

use crate::event::{Input, Output};
use crate::hub::Hub;
use crate::time::Timestamp;

pub trait Core {
    /// Takes one fact at time `now` (see [`Hub::handle`]).
    fn handle(&mut self, input: Input, now: Timestamp);
    /// The next instruction, in the order decided.
    fn poll_output(&mut self) -> Option<Output>;
    /// When the core next needs time to pass.
    fn poll_timeout(&self) -> Option<Timestamp>;
    /// The hub inside, for its config, counts and checks.
    fn hub(&self) -> &Hub;
}

impl Core for Hub {
    fn handle(&mut self, input: Input, now: Timestamp) {
        Hub::handle(self, input, now);
    }

    fn poll_output(&mut self) -> Option<Output> {
        Hub::poll_output(self)
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        Hub::poll_timeout(self)
    }

    fn hub(&self) -> &Hub {
        self
    }
}
