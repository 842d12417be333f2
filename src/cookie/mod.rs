//! The session's cookies: reading the request's `Cookie` headers, writing
//! `Set-Cookie` lines, and spreading a value too large for one cookie over
//! several. Codecs and stores never see a cookie; this module never sees
//! what a value means.

pub(crate) mod chunk;
mod read;
mod write;

pub use chunk::MAX_CHUNKS;
#[cfg(fuzzing)]
pub(crate) use read::family;
pub(crate) use read::{Family, Via, token};
pub(crate) use write::{
    header_value, is_attribute_value, is_cookie_name, removal_cookie, session_cookies, set_cookie,
    token_of,
};

/// The largest cookie the layer writes or tries to decode: browsers store
/// at most 4096 bytes of name, value and attributes per cookie.
pub(crate) const MAX_COOKIE_LEN: usize = 4096;
