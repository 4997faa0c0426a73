//! Message type bytes, per direction: the same byte means different messages from a client
//! and from a server (`D` is Describe one way and DataRow the other). Backend tags are
//! postgres-protocol's; it names no frontend tags, so they are here (protocol chapter 53.7).

/// Messages a client sends.
pub mod frontend {
    pub const BIND: u8 = b'B';
    pub const CLOSE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PARSE: u8 = b'P';
    /// PasswordMessage, SASLInitialResponse and SASLResponse share it.
    pub const PASSWORD: u8 = b'p';
    pub const QUERY: u8 = b'Q';
    pub const SYNC: u8 = b'S';
    pub const TERMINATE: u8 = b'X';
}

/// Messages a server sends.
pub mod backend {
    pub use postgres_protocol::message::backend::{
        AUTHENTICATION_TAG as AUTHENTICATION, BACKEND_KEY_DATA_TAG as BACKEND_KEY_DATA,
        BIND_COMPLETE_TAG as BIND_COMPLETE, CLOSE_COMPLETE_TAG as CLOSE_COMPLETE,
        COMMAND_COMPLETE_TAG as COMMAND_COMPLETE, COPY_DATA_TAG as COPY_DATA,
        COPY_DONE_TAG as COPY_DONE, COPY_IN_RESPONSE_TAG as COPY_IN_RESPONSE,
        COPY_OUT_RESPONSE_TAG as COPY_OUT_RESPONSE, DATA_ROW_TAG as DATA_ROW,
        EMPTY_QUERY_RESPONSE_TAG as EMPTY_QUERY_RESPONSE, ERROR_RESPONSE_TAG as ERROR_RESPONSE,
        NO_DATA_TAG as NO_DATA, NOTICE_RESPONSE_TAG as NOTICE_RESPONSE,
        NOTIFICATION_RESPONSE_TAG as NOTIFICATION_RESPONSE,
        PARAMETER_DESCRIPTION_TAG as PARAMETER_DESCRIPTION,
        PARAMETER_STATUS_TAG as PARAMETER_STATUS, PARSE_COMPLETE_TAG as PARSE_COMPLETE,
        PORTAL_SUSPENDED_TAG as PORTAL_SUSPENDED, READY_FOR_QUERY_TAG as READY_FOR_QUERY,
        ROW_DESCRIPTION_TAG as ROW_DESCRIPTION,
    };
    /// CopyBothResponse (replication only: the proxy refuses it).
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    /// NegotiateProtocolVersion.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}
