//! What a publisher may do to its target.

/// What a publisher may do to its target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Apply every event: add, update and remove (the default).
    #[default]
    Sync,
    /// Never delete: `Removed` events are acknowledged and counted but not applied, and
    /// reconciliation never deletes orphans (a cautious roll-out, as external-dns offers).
    UpsertOnly,
}
