//! JSON bodies that hold one object or a batch of them, as GraphQL and JSON-RPC send and answer.

use serde::Deserialize;

/// Whether `body` is a JSON object of type `T` for which `ok` holds, or a non-empty JSON array of such objects,
/// all of them `ok`: read once, the array by its first byte (an untagged enum would buffer the whole document to
/// try each shape).
pub(crate) fn one_or_batch<'de, T: Deserialize<'de>>(
    body: &'de [u8],
    ok: impl Fn(&T) -> bool,
) -> bool {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    match start.map(|i| body[i]) {
        Some(b'{') => serde_json::from_slice::<T>(body).is_ok_and(|one| ok(&one)),
        Some(b'[') => serde_json::from_slice::<Vec<T>>(body)
            .is_ok_and(|batch| !batch.is_empty() && batch.iter().all(ok)),
        _ => false,
    }
}
