//! Portal links: an application's links to the dashboard in portal mode,
//! found by their token's hash at every request (so a revoked link is
//! refused at once).

use super::*;

impl Store {
    /// Stores a new link and its token's index entry together.
    pub async fn put_portal_link(&self, link: &PortalLink) -> Result<(), StoreError> {
        let hash = hex::decode(&link.token_hash).map_err(|e| StoreError::Corrupt {
            key: link.id.clone(),
            message: format!("the token hash is not hex: {e}"),
        })?;
        let key = scoped(&link.tenant_id, &link.id);
        let mut w = self.plain().await;
        w.insert(&self.portal_links, key.clone(), encode(link))?;
        w.insert(&self.portal_tokens, hash, key)?;
        w.commit().await
    }

    /// The link a token opens, expired or not (the caller tells the two
    /// apart); None for a revoked or unknown token.
    pub fn portal_link_for_token(&self, token: &str) -> Result<Option<PortalLink>, StoreError> {
        let Some(key) = self.portal_tokens.get(token_hash(token))? else {
            return Ok(None);
        };
        self.portal_links
            .get(&key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    /// The links of one application (of all the tenant's with `None`).
    pub fn list_portal_links(
        &self,
        tenant_id: &str,
        app_id: Option<&str>,
    ) -> Result<Vec<PortalLink>, StoreError> {
        let mut links = Vec::new();
        for kv in self.portal_links.scan_prefix(tenant_prefix(tenant_id)) {
            let (k, v) = kv?;
            let link: PortalLink = decode(&k, &v)?;
            if app_id.is_none_or(|a| a == link.app_id) {
                links.push(link);
            }
        }
        Ok(links)
    }

    /// Revokes links (with their tokens); how many there were.
    pub async fn delete_portal_links(&self, links: &[PortalLink]) -> Result<usize, StoreError> {
        let mut w = self.plain().await;
        let mut n = 0;
        for link in links {
            if w.remove(&self.portal_links, scoped(&link.tenant_id, &link.id))? {
                n += 1;
            }
            if let Ok(hash) = hex::decode(&link.token_hash) {
                w.remove(&self.portal_tokens, hash)?;
            }
        }
        w.commit().await?;
        Ok(n)
    }
}
