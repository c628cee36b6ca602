//! Checks at start-up that the etcd credentials may read and write both of our prefixes, so a
//! role without them is a clear error instead of a publisher that retries forever.
//!
//! The probe is a transaction whose compare can never hold (a create revision below zero),
//! with reads and writes of both prefixes in its success branch: etcd checks the permission of
//! every operation of a transaction before evaluating it, so a missing grant is refused while
//! nothing is ever written (vulcand watching its prefix sees nothing).

use etcd_client::{Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp};

use crate::Error;
use crate::layout::Layout;

/// Whether `e` is etcd refusing the operation to these credentials.
pub fn is_permission_denied(e: &etcd_client::Error) -> bool {
    // gRPC status 7, PERMISSION_DENIED (etcd-client does not re-export tonic's `Code`).
    matches!(e, etcd_client::Error::GRpcStatus(s) if i32::from(s.code()) == 7)
}

/// Fails with [`Error::PermissionDenied`] unless the credentials may read and write the
/// vulcand prefix (`v3`: the vulcand keys live in etcd v3) and our state prefix.
pub async fn check(kv: &mut KvClient, layout: &Layout, v3: bool) -> Result<(), Error> {
    let mut prefixes = vec![layout.state_prefix()];
    if v3 {
        prefixes.push(format!("{}/", layout.vulcand_prefix()));
    }
    for prefix in prefixes {
        let probe = format!("{prefix}.ksr-permission-probe");
        let never = Compare::create_revision(probe.as_str(), CompareOp::Less, 0);
        let ops = vec![
            TxnOp::get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
            // (A write: etcd's write permission also covers deletes.)
            TxnOp::put(probe.as_str(), "", None),
        ];
        match kv.txn(Txn::new().when(vec![never]).and_then(ops)).await {
            Ok(_) => {}
            Err(e) if is_permission_denied(&e) => {
                return Err(Error::PermissionDenied {
                    prefix,
                    message: e.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
