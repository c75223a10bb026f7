//! Applications (a tenant's own customers, each with its endpoints) and
//! the tenant's event-type catalog.

use super::*;

/// What writing an application did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutApp {
    Done,
    /// Another application of the tenant has its uid: nothing written.
    UidTaken,
    /// An update of an application deleted meanwhile: nothing written.
    Gone,
}

impl Store {
    /// Creates (`create`) or replaces an application, keeping its `uid`
    /// unique within the tenant. What the stored record says is read in
    /// the same change: an update of an application deleted meanwhile
    /// writes nothing, and only a uid that still names this application
    /// is freed.
    pub async fn put_app(&self, app: &Application, create: bool) -> Result<PutApp, StoreError> {
        self.change([&self.apps, &self.app_uids], |[apps, uids]| {
            let key = scoped(&app.tenant_id, &app.id);
            let stored: Option<Application> = apps
                .get(&key)?
                .map(|v| decode(&key, &v))
                .transpose()
                .map_err(ConflictableTransactionError::Abort)?;
            if !create && stored.is_none() {
                return Ok(PutApp::Gone);
            }
            if let Some(uid) = &app.uid {
                let ukey = scoped(&app.tenant_id, uid);
                if uids
                    .get(&ukey)?
                    .is_some_and(|owner| owner.as_ref() != app.id.as_bytes())
                {
                    return Ok(PutApp::UidTaken);
                }
                uids.insert(&ukey, app.id.as_bytes())?;
            }
            if let Some(old) = stored.and_then(|s| s.uid)
                && app.uid.as_ref() != Some(&old)
            {
                let okey = scoped(&app.tenant_id, &old);
                if uids
                    .get(&okey)?
                    .is_some_and(|o| o.as_ref() == app.id.as_bytes())
                {
                    uids.remove(&okey)?;
                }
            }
            apps.insert(&key, &encode(app))?;
            Ok(PutApp::Done)
        })
        .await
    }

    /// An application of the tenant by its id or its uid.
    pub fn get_app(
        &self,
        tenant_id: &str,
        id_or_uid: &str,
    ) -> Result<Option<Application>, StoreError> {
        let key = scoped(tenant_id, id_or_uid);
        if let Some(v) = self.apps.get(&key)? {
            return decode(&key, &v).map(Some);
        }
        match self.app_uids.get(&key)? {
            Some(id) => {
                let key = scoped(tenant_id, &String::from_utf8_lossy(&id));
                self.apps.get(&key)?.map(|v| decode(&key, &v)).transpose()
            }
            None => Ok(None),
        }
    }

    pub fn list_apps(&self, tenant_id: &str) -> Result<Vec<Application>, StoreError> {
        self.apps
            .scan_prefix(tenant_prefix(tenant_id))
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn count_apps(&self, tenant_id: &str) -> Result<usize, StoreError> {
        count_prefix(&self.apps, &tenant_prefix(tenant_id))
    }

    /// Removes an application (and its uid, if it still names it);
    /// whether it existed. Its subscriptions are the caller's to delete.
    pub async fn delete_app(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        self.change([&self.apps, &self.app_uids], |[apps, uids]| {
            let key = scoped(tenant_id, id);
            let Some(v) = apps.get(&key)? else {
                return Ok(false);
            };
            let stored: Application =
                decode(&key, &v).map_err(ConflictableTransactionError::Abort)?;
            if let Some(uid) = &stored.uid {
                let ukey = scoped(tenant_id, uid);
                if uids
                    .get(&ukey)?
                    .is_some_and(|o| o.as_ref() == id.as_bytes())
                {
                    uids.remove(&ukey)?;
                }
            }
            apps.remove(&key)
        })
        .await
    }

    pub async fn put_event_type(&self, t: &EventType) -> Result<(), StoreError> {
        let mut w = self.plain().await;
        w.insert(&self.event_types, scoped(&t.tenant_id, &t.name), encode(t))?;
        w.commit().await
    }

    pub fn get_event_type(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<Option<EventType>, StoreError> {
        let key = scoped(tenant_id, name);
        self.event_types
            .get(&key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    pub fn list_event_types(&self, tenant_id: &str) -> Result<Vec<EventType>, StoreError> {
        self.event_types
            .scan_prefix(tenant_prefix(tenant_id))
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn count_event_types(&self, tenant_id: &str) -> Result<usize, StoreError> {
        count_prefix(&self.event_types, &tenant_prefix(tenant_id))
    }

    pub async fn delete_event_type(&self, tenant_id: &str, name: &str) -> Result<bool, StoreError> {
        let mut w = self.plain().await;
        let existed = w.remove(&self.event_types, scoped(tenant_id, name))?;
        w.commit().await?;
        Ok(existed)
    }
}
