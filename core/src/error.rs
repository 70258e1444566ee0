//! The protocol's error codes.

use serde::Serialize;

/// Every error code a client can receive in an `error` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Not JSON, not an object, no `type`, or a wrong type in the envelope.
    InvalidFormat,
    UnknownType,
    InvalidPayload,
    MissingRoom,
    /// Empty, over the length limit, or containing control characters.
    InvalidRoom,
    NotInRoom,
    /// The token's `rooms` claim does not allow the room.
    Forbidden,
    TooManyRooms,
    RateLimited,
    ContentTooLong,
    RecipientOffline,
    /// Binary frames are not part of the protocol.
    UnsupportedFrame,
    /// The store or broker cannot take the request now; safe to retry.
    Unavailable,
    /// A `refresh` token that does not verify (bad signature, expired,
    /// malformed claims).
    InvalidToken,
    /// The room's namespace caps its members and it is full.
    RoomFull,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::InvalidFormat,
        ErrorCode::UnknownType,
        ErrorCode::InvalidPayload,
        ErrorCode::MissingRoom,
        ErrorCode::InvalidRoom,
        ErrorCode::NotInRoom,
        ErrorCode::Forbidden,
        ErrorCode::TooManyRooms,
        ErrorCode::RateLimited,
        ErrorCode::ContentTooLong,
        ErrorCode::RecipientOffline,
        ErrorCode::UnsupportedFrame,
        ErrorCode::Unavailable,
        ErrorCode::InvalidToken,
        ErrorCode::RoomFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidFormat => "INVALID_FORMAT",
            ErrorCode::UnknownType => "UNKNOWN_TYPE",
            ErrorCode::InvalidPayload => "INVALID_PAYLOAD",
            ErrorCode::MissingRoom => "MISSING_ROOM",
            ErrorCode::InvalidRoom => "INVALID_ROOM",
            ErrorCode::NotInRoom => "NOT_IN_ROOM",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::TooManyRooms => "TOO_MANY_ROOMS",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::ContentTooLong => "CONTENT_TOO_LONG",
            ErrorCode::RecipientOffline => "RECIPIENT_OFFLINE",
            ErrorCode::UnsupportedFrame => "UNSUPPORTED_FRAME",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::InvalidToken => "INVALID_TOKEN",
            ErrorCode::RoomFull => "ROOM_FULL",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_wire_name() {
        for code in ErrorCode::ALL {
            let wire = serde_json::to_value(code).unwrap();
            assert_eq!(wire.as_str(), Some(code.as_str()));
            assert!(!code.as_str().is_empty());
        }
        assert_eq!(ErrorCode::NotInRoom.as_str(), "NOT_IN_ROOM");
    }
}
