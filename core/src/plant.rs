//! Bugs that can be planted on purpose, to prove the simulator catches them.
//! The switch that turns one on (`Config::plant`) exists only with the
//! `planted-bugs` feature, which only the simulator's tests enable.

/// A deliberate defect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PlantedBug {
    /// `new_message` also goes to the connection that sent it.
    DeliverToSender,
    /// `typing` skips the membership check.
    TypingWithoutMembership,
    /// A dropped connection stays in its rooms' membership and presence.
    KeepPresenceOnDisconnect,
    /// Recovery replays from `since.offset` instead of `since.offset + 1`.
    ReplayOffByOne,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 4] = [
        PlantedBug::DeliverToSender,
        PlantedBug::TypingWithoutMembership,
        PlantedBug::KeepPresenceOnDisconnect,
        PlantedBug::ReplayOffByOne,
    ];
}
