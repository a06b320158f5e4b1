//! Replays and certificates, written once for both backends (see [`super::sql`]). Every
//! read takes the tenant id (the public certificate check passes `None`): another tenant's
//! replay or certificate is NotFound. Rows are written once and never updated.

use super::sql::{self, Cells, Db, Param, SqlRow, bad};
use super::{StoreError, StoreResult};
use crate::domain::certificate::CertificateKind;
use crate::domain::replay::{MatchLevel, ReplayMode, ReplayRecord};
use crate::domain::{CallId, CertificateId, ReplayId, TenantId, Timestamp};

const REPLAY_COLUMNS: &str =
    "id, tenant_id, call_id, replay_call_id, mode, match_level, model_drift, created_at, report";
const CERT_COLUMNS: &str = "id, tenant_id, kind, subject_id, issued_at, body";

/// A certificate as stored: the signed JSON exactly as issued, and what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCertificate {
    pub id: CertificateId,
    pub tenant_id: TenantId,
    pub kind: CertificateKind,
    pub subject_id: String,
    pub issued_at: Timestamp,
    pub body: String,
}

fn replay_from(row: &SqlRow) -> StoreResult<ReplayRecord> {
    let c = Cells::new(row, "replay");
    Ok(ReplayRecord {
        id: ReplayId::parse(&c.text(0)?).map_err(|e| bad("replay has a bad id", e))?,
        tenant_id: TenantId::parse(&c.text(1)?).map_err(|e| bad("replay has a bad tenant", e))?,
        call_id: CallId::parse(&c.text(2)?).map_err(|e| bad("replay has a bad call id", e))?,
        replay_call_id: c
            .opt_text(3)?
            .map(|s| CallId::parse(&s))
            .transpose()
            .map_err(|e| bad("replay has a bad replay call id", e))?,
        mode: ReplayMode::parse(&c.text(4)?).map_err(|e| bad("replay has a bad mode", e))?,
        match_level: c
            .opt_text(5)?
            .map(|s| MatchLevel::parse(&s).ok_or_else(|| bad("replay has a bad match level", s)))
            .transpose()?,
        model_drift: c.int(6)? != 0,
        created_at: Timestamp::from_millis(c.int(7)?),
        report: serde_json::from_str(&c.text(8)?).map_err(|e| bad("replay has a bad report", e))?,
    })
}

fn certificate_from(row: &SqlRow) -> StoreResult<StoredCertificate> {
    let c = Cells::new(row, "certificate");
    let kind = c.text(2)?;
    Ok(StoredCertificate {
        id: CertificateId::parse(&c.text(0)?).map_err(|e| bad("certificate has a bad id", e))?,
        tenant_id: TenantId::parse(&c.text(1)?)
            .map_err(|e| bad("certificate has a bad tenant", e))?,
        kind: CertificateKind::parse(&kind)
            .ok_or_else(|| bad("certificate has a bad kind", kind))?,
        subject_id: c.text(3)?,
        issued_at: Timestamp::from_millis(c.int(4)?),
        body: c.text(5)?,
    })
}

/// The original call must be the tenant's; NotFound otherwise, and nothing is written.
pub(super) fn insert_replay(db: &mut dyn Db, r: &ReplayRecord) -> StoreResult<()> {
    let call = [
        Param::Text(r.tenant_id.as_str()),
        Param::Text(r.call_id.as_str()),
    ];
    if !sql::exists(
        db,
        "SELECT id FROM calls WHERE tenant_id = $1 AND id = $2",
        &call,
    )? {
        return Err(StoreError::NotFound);
    }
    let report = r.report.to_string();
    db.execute(
        &format!(
            "INSERT INTO replays ({REPLAY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ),
        &[
            Param::Text(r.id.as_str()),
            Param::Text(r.tenant_id.as_str()),
            Param::Text(r.call_id.as_str()),
            Param::OptText(r.replay_call_id.as_ref().map(CallId::as_str)),
            Param::Text(r.mode.as_str()),
            Param::OptText(r.match_level.map(MatchLevel::as_str)),
            Param::BigInt(i64::from(r.model_drift)),
            Param::BigInt(r.created_at.millis()),
            Param::Text(&report),
        ],
    )
    .map_err(|e| super::rows::explain_conflict(e, || format!("replay {} exists already", r.id)))?;
    Ok(())
}

pub(super) fn get_replay(
    db: &mut dyn Db,
    tenant: &TenantId,
    id: &ReplayId,
) -> StoreResult<ReplayRecord> {
    sql::one(
        db,
        &format!("SELECT {REPLAY_COLUMNS} FROM replays WHERE tenant_id = $1 AND id = $2"),
        &[Param::Text(tenant.as_str()), Param::Text(id.as_str())],
        replay_from,
    )
}

/// Replays of one call, newest first.
pub(super) fn list_replays(
    db: &mut dyn Db,
    tenant: &TenantId,
    call: &CallId,
) -> StoreResult<Vec<ReplayRecord>> {
    sql::all(
        db,
        &format!(
            "SELECT {REPLAY_COLUMNS} FROM replays WHERE tenant_id = $1 AND call_id = $2 ORDER BY created_at DESC, id DESC"
        ),
        &[Param::Text(tenant.as_str()), Param::Text(call.as_str())],
        replay_from,
    )
}

pub(super) fn insert_certificate(db: &mut dyn Db, c: &StoredCertificate) -> StoredResult {
    super::tenants::require(db, &c.tenant_id)?;
    db.execute(
        &format!("INSERT INTO certificates ({CERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"),
        &[
            Param::Text(c.id.as_str()),
            Param::Text(c.tenant_id.as_str()),
            Param::Text(c.kind.as_str()),
            Param::Text(&c.subject_id),
            Param::BigInt(c.issued_at.millis()),
            Param::Text(&c.body),
        ],
    )
    .map_err(|e| {
        super::rows::explain_conflict(e, || format!("certificate {} exists already", c.id))
    })?;
    Ok(())
}

type StoredResult = StoreResult<()>;

/// `tenant: None` only for the public check, which reveals nothing of the content.
pub(super) fn get_certificate(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    id: &CertificateId,
) -> StoreResult<StoredCertificate> {
    sql::owned(
        db,
        "certificates",
        CERT_COLUMNS,
        id.as_str(),
        tenant,
        false,
        certificate_from,
    )
}
