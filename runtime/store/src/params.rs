//! Placeholder lists for statements whose parameter count varies, padded
//! to powers of two so each has a few texts that stay prepared.

/// `$from, $from+1, ...`: `count` numbered placeholders.
pub(crate) fn numbered(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($from), ($from+1), ...`: `count` one-column VALUES rows.
pub(crate) fn numbered_rows(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|n| format!("(${n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds `ids` and then NULLs up to the next power of two: an `IN` list
/// of [`numbered`] placeholders padded so, whatever the count, the
/// statement is one of a few and stays prepared (a NULL matches nothing).
pub(crate) fn bind_padded<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ids: &[String],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for id in ids {
        query = query.bind(id.clone());
    }
    for _ in ids.len()..ids.len().next_power_of_two() {
        query = query.bind(None::<String>);
    }
    query
}
