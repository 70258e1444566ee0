//! Work the core asks of the shell that must not run on the hub's thread:
//! verifying a refreshed token, asking the app's join and publish hooks. Each call runs as a task on the I/O
//! runtime and answers through the hub's inbox, so a slow one delays
//! nothing else.

use std::sync::Arc;

use roomhub_core::{Input, Output};
use tokio::runtime::Handle;

use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::hub::inbox::Answers;

pub(crate) struct Services {
    pub(crate) hooks: crate::hooks::Hooks,
    /// The I/O runtime (the hub's own thread runs a runtime of its own).
    pub(crate) io: Handle,
    pub(crate) answers: Answers,
    pub(crate) auth: Authenticator,
    pub(crate) clock: Clock,
}

impl Services {
    /// Whether `out` is one of the calls served here.
    pub(crate) fn serves(out: &Output) -> bool {
        matches!(out, Output::VerifyToken { .. } | Output::Hook { .. })
    }

    /// Starts serving `out`; its answer reaches the hub as an input.
    pub(crate) fn call(&self, out: Output) {
        if let Output::Hook { ticket, call } = out {
            let (hooks, answers) = (self.hooks.clone(), self.answers.clone());
            self.io.spawn(async move {
                let verdict = hooks.decide(&call).await;
                answers.send(Input::HookAnswered { ticket, verdict }).await;
            });
            return;
        }
        if let Output::VerifyToken {
            conn,
            request_id,
            token,
        } = out
        {
            let (auth, answers, clock) = (self.auth.clone(), self.answers.clone(), self.clock);
            self.io.spawn(async move {
                let outcome = auth
                    .verify(&token, clock.unix_seconds())
                    .await
                    .map_err(|e| Arc::from(e.message()));
                answers
                    .send(Input::TokenVerified {
                        conn,
                        request_id,
                        outcome,
                    })
                    .await;
            });
        }
    }
}
