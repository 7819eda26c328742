//! Payload encoding: typed values at the edge, bytes (JSON) inside, and the size limit.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};

/// The default largest payload a store accepts: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Encode a value as a JSON payload.
pub fn encode_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| {
        Error::new(
            ErrorKind::Codec,
            format!("can not encode {} as JSON: {e}", std::any::type_name::<T>()),
        )
        .with_source(e)
    })
}

/// Decode a JSON payload of job `job_name`; the error names the job, the type and the serde error.
pub fn decode_json<T: DeserializeOwned>(job_name: &str, payload: &[u8]) -> Result<T> {
    serde_json::from_slice(payload).map_err(|e| {
        Error::new(
            ErrorKind::Codec,
            format!(
                "payload of job {job_name:?} does not decode as {}: {e}",
                std::any::type_name::<T>()
            ),
        )
        .with_source(e)
    })
}

/// Check a payload against the limit; the error has kind [`ErrorKind::PayloadTooLarge`].
pub fn check_payload_size(job_name: &str, len: usize, limit: usize) -> Result<()> {
    check_size(&format!("payload of job {job_name:?}"), len, limit)
}

/// Check `len` bytes of `what` (a run's input, an event's payload, a checkpoint) against the
/// limit; the error has kind [`ErrorKind::PayloadTooLarge`] and names `what`.
pub fn check_size(what: &str, len: usize, limit: usize) -> Result<()> {
    if len > limit {
        return Err(Error::new(
            ErrorKind::PayloadTooLarge,
            format!("{what} is {len} bytes, over the limit of {limit}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_error_names_job_type_and_cause() {
        let err = decode_json::<u32>("send_email", b"\"x\"").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Codec);
        assert!(err.message().contains("send_email"), "{err}");
        assert!(err.message().contains("u32"), "{err}");
        assert!(err.message().contains("invalid type"), "{err}");
    }

    #[test]
    fn size_limit() {
        assert!(check_payload_size("j", 10, 10).is_ok());
        let err = check_payload_size("j", 11, 10).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    }
}
