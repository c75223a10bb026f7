//! Applications (a tenant's own customers, each with its endpoints) and
//! the tenant's event-type catalog.

use super::*;

impl Store {
    /// Creates or replaces an application, keeping its `uid` unique within
    /// the tenant. False (nothing written) when another application of the
    /// tenant has that uid.
    pub async fn put_app(
        &self,
        app: &Application,
        old_uid: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.change([&self.apps, &self.app_uids], |[apps, uids]| {
            if let Some(uid) = &app.uid {
                let key = scoped(&app.tenant_id, uid);
                if let Some(owner) = uids.get(&key)?
                    && owner.as_ref() != app.id.as_bytes()
                {
                    return Ok(false);
                }
                uids.insert(&key, app.id.as_bytes())?;
            }
            if let Some(old) = old_uid
                && app.uid.as_deref() != Some(old)
            {
                uids.remove(&scoped(&app.tenant_id, old))?;
            }
            apps.insert(&scoped(&app.tenant_id, &app.id), &encode(app))?;
            Ok(true)
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

    /// Removes an application (and its uid); whether it existed. Its
    /// subscriptions are the caller's to delete.
    pub async fn delete_app(&self, app: &Application) -> Result<bool, StoreError> {
        self.change([&self.apps, &self.app_uids], |[apps, uids]| {
            if let Some(uid) = &app.uid {
                uids.remove(&scoped(&app.tenant_id, uid))?;
            }
            apps.remove(&scoped(&app.tenant_id, &app.id))
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
