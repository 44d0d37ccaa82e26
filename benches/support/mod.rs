//! Pieces of the RPC benchmark that are not the measurement loop itself.

pub(crate) mod child;

pub(crate) mod overload;
pub(crate) mod peers;
pub(crate) mod servers;
pub(crate) mod sys;

/// The median of `values` (sorted in place); the mean of the middle two for an even count.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
