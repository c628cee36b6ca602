//! The stream as history: filtered events, the routing table at an instant, and diffs.

mod diff;
mod filter;
mod instant;
mod render;
mod table;

pub use diff::{RouteChange, diff, diff_text};
pub use filter::{Filter, glob};
pub use instant::{At, format_time, now_ns, parse_instant};
pub use render::{
    EventRow, event_cells, event_header, event_row, line, state_table, table, widths,
};
pub use table::{Routed, Table, port_text, scheme_text, state_at};
