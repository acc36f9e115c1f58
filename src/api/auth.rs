//! Roles from peer credentials.
//!
//! The kernel tells us the caller's uid and gid (`SO_PEERCRED`); its supplementary groups come from
//! the group database (`getgrouplist`, so NSS sources such as LDAP count). Configured group names
//! are resolved once at start-up; a name that does not exist simply matches nobody.
//!
//! Roles: `user` (inference, own history), `admin` (models, jobs, keys, erasure, audit; implies
//! `user`), `auditor` (audit read, verify and export, never prompt text). Which route needs which
//! role is declared in one place, [`super::router`].

use super::error::ApiError;
use super::Caller;
use crate::config::RolesConfig;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use nix::unistd::{getgrouplist, Gid, Group, Uid, User};
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A role a route can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Inference and one's own history.
    User,
    /// Administration.
    Admin,
    /// Audit log access.
    Auditor,
}

impl Role {
    /// The role's name as it appears in errors and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
}

/// The roles one caller holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoleSet {
    /// May run inference.
    pub user: bool,
    /// May administer.
    pub admin: bool,
    /// May read the audit log.
    pub auditor: bool,
}

impl RoleSet {
    /// Does this set satisfy `role`? Admins may do everything a user or auditor may.
    pub fn allows(&self, role: Role) -> bool {
        match role {
            Role::User => self.user || self.admin,
            Role::Admin => self.admin,
            Role::Auditor => self.auditor || self.admin,
        }
    }
}

/// How long a uid's supplementary groups are cached.
const GROUP_CACHE_TTL: Duration = Duration::from_secs(30);

/// Resolved role configuration.
pub struct Roles {
    user_gids: Vec<u32>,
    admin_gids: Vec<u32>,
    auditor_gids: Vec<u32>,
    cfg: RolesConfig,
    groups: Mutex<HashMap<u32, (Instant, Vec<u32>)>>,
}

fn resolve(names: &[String]) -> Vec<u32> {
    names
        .iter()
        .filter_map(|n| match Group::from_name(n) {
            Ok(Some(g)) => Some(g.gid.as_raw()),
            _ => {
                tracing::warn!(group = %n, "configured group does not exist; it grants nothing");
                None
            }
        })
        .collect()
}

impl Roles {
    /// Resolves the configured group names.
    pub fn new(cfg: &RolesConfig) -> Arc<Roles> {
        Arc::new(Roles {
            user_gids: resolve(&cfg.user_groups),
            admin_gids: resolve(&cfg.admin_groups),
            auditor_gids: resolve(&cfg.auditor_groups),
            cfg: cfg.clone(),
            groups: Mutex::new(HashMap::new()),
        })
    }

    /// The caller's primary gid plus the supplementary groups of its uid in the group database.
    pub fn groups_of(&self, caller: &Caller) -> Vec<u32> {
        let now = Instant::now();
        if let Ok(cache) = self.groups.lock() {
            if let Some((at, g)) = cache.get(&caller.uid) {
                if now.duration_since(*at) < GROUP_CACHE_TTL {
                    let mut g = g.clone();
                    g.push(caller.gid);
                    return g;
                }
            }
        }
        let mut gids: Vec<u32> = match User::from_uid(Uid::from_raw(caller.uid)) {
            Ok(Some(user)) => CString::new(user.name)
                .ok()
                .and_then(|name| getgrouplist(&name, user.gid).ok())
                .unwrap_or_default()
                .into_iter()
                .map(Gid::as_raw)
                .collect(),
            _ => vec![],
        };
        if let Ok(mut cache) = self.groups.lock() {
            cache.insert(caller.uid, (now, gids.clone()));
        }
        gids.push(caller.gid);
        gids
    }

    /// The roles `caller` holds.
    pub fn of(&self, caller: &Caller) -> RoleSet {
        let groups = self.groups_of(caller);
        let member = |gids: &[u32]| groups.iter().any(|g| gids.contains(g));
        RoleSet {
            user: self.cfg.user_uids.contains(&caller.uid) || member(&self.user_gids),
            admin: self.cfg.admin_uids.contains(&caller.uid) || member(&self.admin_gids),
            auditor: self.cfg.auditor_uids.contains(&caller.uid) || member(&self.auditor_gids),
        }
    }
}

/// State for [`require`]: the roles and the role a route needs.
#[derive(Clone)]
pub struct Requirement {
    /// Resolved roles.
    pub roles: Arc<Roles>,
    /// What the route needs.
    pub role: Role,
    /// Where denials are audited.
    pub store: crate::storage::StoreHandle,
    /// How many denials per uid are written down.
    pub denials: Arc<DenialLimiter>,
}

/// Denials recorded one by one per uid and minute; the rest are counted.
const DENIALS_RECORDED_PER_MINUTE: u32 = 20;
/// Longest request path written to the journal or the audit log.
const DENIED_PATH_MAX: usize = 256;

/// Bounds what denied requests write: anyone who can reach the socket can be refused, so
/// without a bound an unprivileged process could fill the disk with audit rows and the journal
/// with warnings. Per uid, the first [`DENIALS_RECORDED_PER_MINUTE`] denials of a minute are
/// logged and audited one by one; later ones are only counted, and the count goes into the next
/// recorded event (`suppressed_before`), so the audit log still accounts for every denial.
#[derive(Default)]
pub struct DenialLimiter {
    per_uid: Mutex<HashMap<u32, DenialWindow>>,
}

struct DenialWindow {
    opened: std::time::Instant,
    recorded: u32,
    suppressed: u64,
}

impl DenialLimiter {
    /// `Some(n)` when this denial is to be recorded (`n` suppressed since the last recorded
    /// one), `None` when it is only counted.
    pub fn admit(&self, uid: u32, now: std::time::Instant) -> Option<u64> {
        let mut map = self.per_uid.lock().unwrap_or_else(|e| e.into_inner());
        let w = map.entry(uid).or_insert(DenialWindow {
            opened: now,
            recorded: 0,
            suppressed: 0,
        });
        if now.duration_since(w.opened) >= std::time::Duration::from_secs(60) {
            w.opened = now;
            w.recorded = 0;
        }
        if w.recorded < DENIALS_RECORDED_PER_MINUTE {
            w.recorded += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// Middleware: refuses a caller without the route's role with 403.
pub async fn require(
    State(req_role): State<Requirement>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if req_role.roles.of(&caller).allows(req_role.role) {
        return Ok(next.run(request).await);
    }
    let Some(suppressed) = req_role
        .denials
        .admit(caller.uid, std::time::Instant::now())
    else {
        return Err(ApiError::forbidden(req_role.role));
    };
    let mut path = request.uri().path();
    if path.len() > DENIED_PATH_MAX {
        let mut end = DENIED_PATH_MAX;
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        path = &path[..end];
    }
    let path = path.to_string();
    tracing::warn!(
        uid = caller.uid,
        gid = caller.gid,
        path = %path,
        needs = req_role.role.name(),
        suppressed_before = suppressed,
        "request denied"
    );
    // Audited off the request path: a refusal must not wait on (or be blocked by) the disk.
    let mut detail = serde_json::json!({"path": path, "method": request.method().as_str(),
        "needs": req_role.role.name(), "gid": caller.gid});
    if suppressed > 0 {
        detail["suppressed_before"] = suppressed.into();
    }
    let store = req_role.store.clone();
    tokio::spawn(async move {
        if let Err(e) = store
            .audit_append("denied", Some(caller.uid), detail.to_string())
            .await
        {
            tracing::error!(error = %e, "audit event for a denied request not stored");
        }
    });
    Err(ApiError::forbidden(req_role.role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_recorded_up_to_a_bound_per_uid_and_minute_and_the_rest_counted() {
        let limiter = DenialLimiter::default();
        let t0 = std::time::Instant::now();
        for _ in 0..DENIALS_RECORDED_PER_MINUTE {
            assert_eq!(limiter.admit(7, t0), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(limiter.admit(7, t0), None);
        }
        // Another uid has its own allowance.
        assert_eq!(limiter.admit(8, t0), Some(0));
        // The next minute: recorded again, with the count of those only counted.
        let later = t0 + std::time::Duration::from_secs(61);
        assert_eq!(limiter.admit(7, later), Some(5));
        assert_eq!(limiter.admit(7, later), Some(0));
    }

    fn caller(uid: u32, gid: u32) -> Caller {
        Caller {
            uid,
            gid,
            pid: None,
        }
    }

    #[test]
    fn admin_implies_user_and_auditor_but_not_the_reverse() {
        let admin = RoleSet {
            admin: true,
            ..Default::default()
        };
        assert!(admin.allows(Role::User) && admin.allows(Role::Auditor));
        let auditor = RoleSet {
            auditor: true,
            ..Default::default()
        };
        assert!(!auditor.allows(Role::User) && !auditor.allows(Role::Admin));
        assert!(!RoleSet::default().allows(Role::User));
    }

    #[test]
    fn uids_and_primary_groups_grant_roles() {
        let cfg = RolesConfig {
            user_groups: vec!["root".into()],
            admin_groups: vec![],
            auditor_groups: vec!["no-such-group-here".into()],
            user_uids: vec![4242],
            admin_uids: vec![0],
            auditor_uids: vec![777],
        };
        let roles = Roles::new(&cfg);
        let root = roles.of(&caller(0, 0));
        assert!(root.admin && root.user);
        let listed = roles.of(&caller(4242, 4242));
        assert!(listed.user && !listed.admin && !listed.auditor);
        // gid 0 is group "root", configured as a user group.
        assert!(roles.of(&caller(5000, 0)).user);
        assert_eq!(roles.of(&caller(5001, 5001)), RoleSet::default());
        assert!(roles.of(&caller(777, 777)).auditor);
    }
}
