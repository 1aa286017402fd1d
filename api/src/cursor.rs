//! The opaque cursor of a page of orders, newest first: keyset pagination on
//! (created_at, order_id), so pages never skip or repeat an order while new ones arrive.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// PostgreSQL's earliest `timestamptz` (4713-11-24 BC), in microseconds since 1970.
const EARLIEST_MICROS: i64 = -210_866_803_200_000_000;

/// Where the next page starts: after this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The last order's creation time.
    pub created_at: DateTime<Utc>,
    /// The last order's id.
    pub order_id: Uuid,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}_{}",
            self.created_at.timestamp_micros(),
            self.order_id.simple()
        )
    }
}

impl std::str::FromStr for Cursor {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const BAD: &str = "not a cursor this API gave";
        let (micros, id) = text.split_once('_').ok_or(BAD)?;
        // Exactly as written: decimal microseconds (at most 18 digits) and the id's 32 hex digits.
        let digits = micros.strip_prefix('-').unwrap_or(micros);
        let well_formed = (1..=18).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err(BAD);
        }
        // Before PostgreSQL's earliest time (4713 BC) no order was made: such a cursor is read as
        // that earliest time, after which (going back) nothing remains.
        let micros = micros.parse::<i64>().map_err(|_| BAD)?.max(EARLIEST_MICROS);
        Ok(Cursor {
            created_at: DateTime::from_timestamp_micros(micros).ok_or(BAD)?,
            order_id: Uuid::try_parse(id).map_err(|_| BAD)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_it_was_written_and_nothing_else_is_one() {
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_764_720_000_123_456).unwrap(),
            order_id: Uuid::new_v4(),
        };
        assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor));
        let ancient: Cursor = "-263155331414068602_8b7d5b9d72d22219f0d4360b157bbd53"
            .parse()
            .unwrap();
        assert_eq!(ancient.created_at.timestamp_micros(), EARLIEST_MICROS);
        for bad in [
            "",
            "12",
            "x_y",
            "12_not-a-uuid",
            "_0190a8b0-0000-7000-8000-000000000000",
            "12_0190a8b0-0000-7000-8000-000000000000",
            "+12_0190a8b000007000800000000000000f",
            "12_0190A8B000007000800000000000000F",
            "1234567890123456789_0190a8b000007000800000000000000f",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }
}
