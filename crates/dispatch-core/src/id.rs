//! TypeID identifiers: `job_01h…`, `wfrun_01h…`, one Rust type per prefix.
//!
//! Every ID is a UUIDv7 (K-sortable: IDs made later sort later, to the millisecond) rendered as
//! `prefix_<26 chars of Crockford base32>` per the TypeID spec. Parsing checks the prefix, so a
//! `RunId` string never parses as a `JobId`. The base32 rendering preserves order, so stores may
//! sort the text form and get creation order, which keyset pagination relies on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use type_safe_id::{StaticType, TypeSafeId};
use uuid::Uuid;

use crate::error::{Error, ErrorKind};

macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident, $tag:ident, $prefix:literal) => {
        #[doc = concat!("TypeID prefix marker for [`", stringify!($name), "`].")]
        #[derive(Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
        pub struct $tag;

        impl StaticType for $tag {
            const TYPE: &'static str = $prefix;
        }

        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub struct $name(TypeSafeId<$tag>);

        /// Hashes the UUID alone: the prefix is the same for every value of the type.
        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                state.write_u128(self.0.uuid().as_u128());
            }
        }

        impl $name {
            /// The TypeID prefix of this kind of ID.
            pub const PREFIX: &'static str = $prefix;

            /// A new, unique ID stamped with the current time. IDs made in this process sort in
            /// the order they were made, within one millisecond too (UUIDv7 with the `uuid`
            /// crate's shared counter), so a batch's jobs list in enqueue order.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self::from_uuid(Uuid::now_v7())
            }

            /// The ID with the given UUID (used by stores that keep the UUID in a native column).
            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(TypeSafeId::from_uuid(uuid))
            }

            /// The UUID inside the ID.
            pub fn uuid(&self) -> Uuid {
                self.0.uuid()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                s.parse::<TypeSafeId<$tag>>().map(Self).map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!("{s:?} is not a valid {} ID: {e}", $prefix),
                    )
                })
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

define_id!(
    /// Identifies one job (`job_…`).
    JobId, JobTag, "job"
);
define_id!(
    /// Identifies one workflow run (`wfrun_…`).
    RunId, RunTag, "wfrun"
);
define_id!(
    /// Identifies one cron entry (`cron_…`).
    CronId, CronTag, "cron"
);
define_id!(
    /// Identifies one dead letter queue entry (`dlq_…`).
    DlqId, DlqTag, "dlq"
);
define_id!(
    /// Identifies one published event (`evt_…`).
    EventId, EventTag, "evt"
);
define_id!(
    /// Identifies one worker process (`wkr_…`).
    WorkerId, WorkerTag, "wkr"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let id = JobId::new();
        let text = id.to_string();
        assert!(text.starts_with("job_"));
        assert_eq!(text.len(), 4 + 26);
        assert_eq!(text.parse::<JobId>().unwrap(), id);
    }

    #[test]
    fn wrong_prefix_is_rejected() {
        let run = RunId::new().to_string();
        let err = run.parse::<JobId>().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!("job_notbase32".parse::<JobId>().is_err());
        assert!("".parse::<JobId>().is_err());
        assert!(JobId::new().to_string().parse::<DlqId>().is_err());
    }

    #[test]
    fn serde_round_trip_uses_text() {
        let id = WorkerId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<WorkerId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<JobId>(&json).is_err());
    }

    #[test]
    fn text_order_matches_id_order() {
        let mut ids: Vec<JobId> = (0..200).map(|_| JobId::new()).collect();
        ids.sort();
        let mut texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let sorted = texts.clone();
        texts.sort();
        assert_eq!(texts, sorted);
    }

    /// IDs made one after another in a process sort in the order they were made, within one
    /// millisecond too (a batch's jobs list in enqueue order).
    #[test]
    fn ids_made_in_a_row_sort_in_creation_order() {
        let ids: Vec<JobId> = (0..10_000).map(|_| JobId::new()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn uuid_round_trip() {
        let id = EventId::new();
        assert_eq!(EventId::from_uuid(id.uuid()), id);
        assert_eq!(CronId::PREFIX, "cron");
    }
}
