//! The dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver against the real binary: the
//! operator creates a tenant, the tenant signs in, adds an endpoint, sees an
//! event's delivery appear live with its status and HTTP code, opens it,
//! retries it, disables the endpoint and sees the banner; a tenant string
//! full of markup shows as text. A screenshot of each page is saved under
//! `target/ui-screenshots/<process>-<browser>/`.
//!
//! Without chromedriver the test says so and passes — except in CI
//! (`CI=true`), where `.ci/run` installs it and its absence is a failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::harness::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver on a free port, once it answers; None when not installed.
async fn chromedriver() -> Option<Driver> {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must install chromium and chromium-driver (see .ci/run)"
        );
        eprintln!("skipping the dashboard test: {CHROMEDRIVER} or {CHROMIUM} is missing");
        return None;
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let status = format!("{}/status", driver.url);
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if let Ok(r) = crate::support::http_client().get(&status).send().await
            && r.status().is_success()
        {
            return Some(driver);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start");
}

struct Browser {
    client: Client,
    shots: PathBuf,
    n: usize,
}

impl Browser {
    async fn open(driver: &Driver, profile: &std::path::Path) -> Browser {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .expect("a Chromium session");
        // One folder per browser: the dashboard tests run at once, and one
        // clearing a shared folder removed it under another's screenshot.
        static BROWSERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = BROWSERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shots = crate::support::repo_root()
            .join("target/ui-screenshots")
            .join(format!("{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            shots,
            n: 0,
        }
    }

    /// Saves a screenshot of the page as it is now.
    async fn shot(&mut self, name: &str) {
        self.n += 1;
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{:02}-{name}.png", self.n)), png).unwrap();
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// Finds `css` and runs `act` on it; finds it again when the page
    /// replaced it in between (a view renders, then renders again when its
    /// data arrives: a slow machine lands between the two, and the element
    /// found first is stale).
    async fn on<T, F, Fut>(&self, locator: Locator<'_>, act: F) -> T
    where
        F: Fn(fantoccini::elements::Element) -> Fut,
        Fut: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
    {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let element = self
                .client
                .wait()
                .at_most(PATIENCE)
                .for_element(locator)
                .await
                .unwrap_or_else(|e| panic!("no element {locator:?}: {e}"));
            match act(element).await {
                Ok(done) => return done,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{locator:?}: {e}"),
            }
        }
    }

    /// Types `text` into the input `css` (see [`Browser::on`]).
    async fn type_into(&self, css: &str, text: &str) {
        self.on(
            Locator::Css(css),
            |e| async move { e.send_keys(text).await },
        )
        .await
    }

    /// The text of `css` (see [`Browser::on`]).
    async fn text(&self, css: &str) -> String {
        self.on(Locator::Css(css), |e| async move { e.text().await })
            .await
    }

    /// Clicks `css` (see [`Browser::on`]).
    async fn click(&self, css: &str) {
        self.on(
            Locator::Css(css),
            |e| async move { e.click().await.map(|_| ()) },
        )
        .await
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Waits until `script` returns true (polls; the page updates itself).
    async fn until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            // A script that throws (its element not rendered yet) is "not yet".
            if let Ok(Value::Bool(true)) = self.client.execute(script, vec![]).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = self.js("return document.body.innerText").await;
        panic!("timed out waiting for {what}; the page shows:\n{text}");
    }

    async fn click_button(&self, label: &str) {
        let xpath =
            format!("//button[normalize-space()='{label}'] | //a[normalize-space()='{label}']");
        self.on(Locator::XPath(&xpath), |e| async move {
            e.click().await.map(|_| ())
        })
        .await
    }

    async fn sign_in(&self, key: &str) {
        self.type_into("#signin input[type=password]", key).await;
        self.click("#signin button[type=submit]").await;
    }
}

#[tokio::test]
async fn a_tenant_lives_in_the_dashboard() {
    let Some(driver) = chromedriver().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let rx = Receiver::ok().await;

    // The page's own headers: its scripts only, nothing inline.
    let page = crate::support::http_client()
        .get(format!("{}/ui/", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    assert!(page.headers().get("set-cookie").is_none());

    let profile = tempfile::tempdir().unwrap();
    let mut b = Browser::open(&driver, profile.path()).await;
    let ui = format!("{}/ui/", server.base);
    b.client.goto(&ui).await.unwrap();
    b.find("#signin").await;
    b.shot("sign-in").await;

    // A wrong key is refused with a message; nothing is kept.
    b.sign_in("whk_not-a-key").await;
    b.until(
        "the refusal",
        "return document.body.innerText.includes('neither a tenant')",
    )
    .await;
    assert_eq!(
        b.js("return sessionStorage.getItem('wasmhook.key')").await,
        Value::Null
    );

    // The operator creates a tenant; its key is shown once.
    b.sign_in(ADMIN_TOKEN).await;
    b.find("#tenant-form").await;
    b.type_into("input[name=tenant_name]", "Acme <b>bold</b>")
        .await;
    b.click("#tenant-form button[type=submit]").await;
    let key = b.text("#new-key").await;
    assert!(key.starts_with("whk_"), "{key}");
    b.until(
        "the tenant listed, its name as text",
        "return [...document.querySelectorAll('#tenants td')].some(td => td.textContent === 'Acme <b>bold</b>')",
    )
    .await;
    b.shot("operator-tenants").await;
    b.click_button("Sign out").await;

    // The tenant signs in; the key is never in the URL.
    b.sign_in(&key).await;
    b.until(
        "the endpoints page",
        "return location.hash === '#/endpoints' && document.querySelector('h1').textContent === 'Endpoints'",
    )
    .await;
    assert!(
        !b.client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains(&key)
    );

    // Add an endpoint whose description is markup.
    b.click_button("Add endpoint").await;
    b.find("#endpoint-form").await;
    b.type_into("input[name=url]", &rx.url()).await;
    b.type_into("input[name=description]", "<script>alert(1)</script>")
        .await;
    // Ordered by conversation and paced: the form's own fields.
    b.type_into("input[name=ordering_key]", "/data/conversation_id")
        .await;
    b.type_into("input[name=rate_per_second]", "100").await;
    b.shot("add-endpoint").await;
    b.click("#endpoint-form button[type=submit]").await;
    b.until(
        "the endpoint page",
        "return location.hash.startsWith('#/endpoints/sub_')",
    )
    .await;
    let sub_id = b
        .js("return location.hash.split('/')[2]")
        .await
        .as_str()
        .unwrap()
        .to_string();
    b.until(
        "the ordering and the rate limit on the endpoint page",
        "const o = document.querySelector('#endpoint-ordering'), r = document.querySelector('#endpoint-rate'); \
         return !!o && o.textContent.includes('/data/conversation_id') && r.textContent.includes('100/s')",
    )
    .await;
    let (_, created) = server
        .call("GET", &format!("/v1/subscriptions/{sub_id}"), &key, None)
        .await;
    assert_eq!(created["ordering"]["key"], "/data/conversation_id");
    assert_eq!(created["rate_limit"]["per_second"], 100.0);

    // An event through the API: its delivery shows up live, succeeded, 200.
    let (status, _) = server
        .call("POST", "/v1/events", &key, Some(message_event("ui-1")))
        .await;
    assert_eq!(status, 202);
    b.until(
        "the delivery row with its status and HTTP code",
        "const row = document.querySelector('#deliveries tbody tr.clickable'); \
         return !!row && row.textContent.includes('message.created') && row.textContent.includes('succeeded') && row.cells[2].textContent === '200'",
    )
    .await;
    b.shot("endpoint-with-delivery").await;

    // Open it: the body as sent and the attempt.
    b.click("#deliveries tbody tr.clickable a").await;
    b.find("#request-body").await;
    let body = b.text("#request-body").await;
    assert!(body.contains("\"content\": \"hello\""), "{body}");
    let headers = b.text("#request-headers").await;
    assert!(headers.contains("webhook-signature"), "{headers}");
    assert!(headers.contains("v1,••••••"), "signature masked: {headers}");
    assert!(!headers.contains(&sub_secret_prefix(&server, &key, &sub_id).await));
    let attempts = b.text("#attempts").await;
    assert!(attempts.contains("200"), "{attempts}");
    b.shot("delivery").await;

    // Retry: sent again under the same delivery id.
    b.click_button("Retry").await;
    let got = rx.wait_for(2, PATIENCE).await;
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    b.until(
        "the second attempt",
        "const t = document.querySelector('#attempts'); return !!t && t.querySelectorAll('tbody tr').length === 2",
    )
    .await;

    // The whole tenant's deliveries, filtered by status.
    b.client
        .goto(&format!("{ui}#/deliveries?status=succeeded"))
        .await
        .unwrap();
    b.until(
        "the tenant's deliveries",
        "return !!document.querySelector('#deliveries tbody tr.clickable')",
    )
    .await;
    b.shot("deliveries").await;

    // Disable the endpoint: the banner says so on every page.
    b.client
        .goto(&format!("{ui}#/endpoints/{sub_id}"))
        .await
        .unwrap();
    b.click_button("Disable").await;
    b.until(
        "the banner",
        "return document.querySelector('#banner').textContent.includes('is disabled')",
    )
    .await;
    let (_, sub) = server
        .call("GET", &format!("/v1/subscriptions/{sub_id}"), &key, None)
        .await;
    assert_eq!(sub["enabled"], false, "the page went through the API");

    // The endpoints list: the description shows as text, nothing ran.
    b.client.goto(&format!("{ui}#/endpoints")).await.unwrap();
    b.until(
        "the description as text",
        "return document.querySelector('#endpoints').textContent.includes('<script>alert(1)</script>')",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelectorAll('script').length")
            .await,
        json!(1),
        "only the page's own script"
    );
    assert!(
        b.client.get_alert_text().await.is_err(),
        "no alert was opened"
    );
    b.shot("endpoints-disabled-banner").await;

    // Plugins: upload a component from a file; a wrong one is refused
    // with the API's message.
    let wasm_dir = tempfile::tempdir().unwrap();
    let good = wasm_dir.path().join("plugin.wasm");
    std::fs::write(&good, crate::support::fixture("raw-wit")).unwrap();
    let bad = wasm_dir.path().join("bad.wasm");
    std::fs::write(&bad, crate::support::fixture("wrong-world")).unwrap();
    b.client.goto(&format!("{ui}#/plugins")).await.unwrap();
    for (name, file) in [("wrong-one", &bad), ("from-the-page", &good)] {
        b.type_into("#upload-form input[name=name]", name).await;
        b.type_into("#upload-form input[type=file]", file.to_str().unwrap())
            .await;
        b.click("#upload-form button[type=submit]").await;
        if name == "wrong-one" {
            b.until(
                "the refusal",
                "return !!document.querySelector('#upload-form .error')",
            )
            .await;
            b.on(
                Locator::Css("#upload-form input[name=name]"),
                |e| async move { e.clear().await },
            )
            .await;
        }
    }
    b.until(
        "the uploaded plugin",
        "return document.querySelector('#plugins').textContent.includes('from-the-page')",
    )
    .await;
    b.shot("plugins").await;
    b.find("#dry-run-form").await;
    b.click("#dry-run-form button[type=submit]").await;
    b.until(
        "the dry run's answer",
        "return document.querySelector('#dry-run-result').textContent.includes('ms')",
    )
    .await;
    b.js("document.querySelector('#dry-run-result').scrollIntoView()")
        .await;
    b.shot("plugins-dry-run").await;

    // Windows: a day's chat log held per group, flushed from the page.
    let hc = Receiver::start(vec![], Answer::status(200).body(r#"{"status":"success"}"#)).await;
    server
        .subscribe(
            &key,
            json!({"url": hc.url(), "event_types": ["message.created"],
                   "plugin": {"id": "builtin:helloclient-chatlog"},
                   "signature": {"scheme": "timestamped-hex"}, "retry": {"preset": "helloclient"},
                   "expect_body": {"status": "success"},
                   "window": {"every": "1d", "at": "02:00", "timezone": "UTC"}}),
        )
        .await;
    server
        .call("POST", "/v1/events", &key, Some(message_event("ui-2")))
        .await;
    b.client.goto(&format!("{ui}#/windows")).await.unwrap();
    b.until(
        "the held item",
        "return document.querySelector('main').textContent.includes('bot-1: 1')",
    )
    .await;
    b.shot("windows").await;
    b.click_button("Flush now").await;
    let sent = hc.wait_for(1, PATIENCE).await;
    assert!(
        String::from_utf8_lossy(&sent[0].body).contains("hello"),
        "the collection holds the message"
    );

    // Sources: a poll source of an API that is not there shows its error,
    // and a webhook source its URL.
    let gone = format!(
        "http://127.0.0.1:{}/api/conversations",
        crate::harness::free_port()
    );
    let (status, polled) = server
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(json!({"kind": "poll", "secret": "api-token-123",
                        "poll": {"url": gone, "every_secs": 1, "format": "ohallo-conversation"}})),
        )
        .await;
    assert_eq!(status, 201, "{polled}");
    let (status, _) = server
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(json!({"kind": "onwebchat", "secret": "owc-secret-1234"})),
        )
        .await;
    assert_eq!(status, 201);
    b.client.goto(&format!("{ui}#/sources")).await.unwrap();
    b.until(
        "the poll source's error",
        "const t = document.querySelector('#sources') && document.querySelector('#sources').textContent; return !!t && t.includes('failing') && t.includes('connect') && t.includes('/in/src_')",
    )
    .await;
    b.shot("sources").await;
    let (status, _) = server
        .call(
            "DELETE",
            &format!("/v1/sources/{}", polled["id"].as_str().unwrap()),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 204);

    // Alerts: the ops endpoint set from the page, its secret shown.
    let ops_rx = Receiver::ok().await;
    b.client.goto(&format!("{ui}#/ops")).await.unwrap();
    b.type_into("input[name=ops_url]", &ops_rx.url()).await;
    // The windows page asked for a refresh a second after "Flush now"; it
    // must not re-render this page and throw away what was typed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        b.js("return document.querySelector('input[name=ops_url]').value")
            .await,
        Value::String(ops_rx.url()),
        "what was typed on the alerts page is still there"
    );
    b.click("#ops-form button[type=submit]").await;
    b.until(
        "the ops secret",
        "return document.querySelector('main').textContent.includes('whsec_')",
    )
    .await;
    b.shot("alerts").await;
    let (status, ops) = server.call("GET", "/v1/ops-endpoint", &key, None).await;
    assert_eq!(status, 200);
    assert_eq!(ops["url"], ops_rx.url().as_str());

    // A Redis stream as the destination, from the form's own fields: the
    // password in the URL is stored, never shown again.
    b.client
        .goto(&format!("{ui}#/endpoints/new"))
        .await
        .unwrap();
    b.find("#endpoint-form").await;
    assert_eq!(
        b.js("return document.querySelector('#destination-redis').hidden")
            .await,
        Value::Bool(true),
        "broker fields only for their type"
    );
    b.js("const s = document.querySelector('select[name=destination_type]'); s.value = 'redis'; s.dispatchEvent(new Event('change')); return true")
        .await;
    b.type_into(
        "input[name=url]",
        "redis://:ui-redis-pw-31337@redis.example:6380/1",
    )
    .await;
    b.type_into("input[name=destination_stream]", "crm:leads")
        .await;
    b.shot("add-redis-endpoint").await;
    b.click("#endpoint-form button[type=submit]").await;
    b.until(
        "the Redis endpoint's page",
        "const d = document.querySelector('#endpoint-destination'); return !!d && d.textContent.includes('Redis stream crm:leads')",
    )
    .await;
    assert!(
        !b.js("return document.body.innerHTML")
            .await
            .to_string()
            .contains("ui-redis-pw-31337")
    );
    let redis_id = b
        .js("return location.hash.split('/')[2]")
        .await
        .as_str()
        .unwrap()
        .to_string();
    let (_, made) = server
        .call("GET", &format!("/v1/subscriptions/{redis_id}"), &key, None)
        .await;
    assert_eq!(made["destination"]["type"], "redis", "{made}");
    assert_eq!(made["destination"]["url"], "redis://redis.example:6380/1");
    assert_eq!(made["destination"]["password_set"], true);
    // Edited without the password: the stored one stays.
    b.click_button("Edit").await;
    b.find("#endpoint-form").await;
    assert_eq!(
        b.js("return document.querySelector('select[name=destination_type]').value")
            .await,
        Value::String("redis".into())
    );
    b.click("#endpoint-form button[type=submit]").await;
    b.until(
        "the Redis endpoint's page again",
        "const d = document.querySelector('#endpoint-destination'); return !!d && d.textContent.includes('crm:leads')",
    )
    .await;
    let (_, kept) = server
        .call("GET", &format!("/v1/subscriptions/{redis_id}"), &key, None)
        .await;
    assert_eq!(kept["destination"]["password_set"], true, "{kept}");

    // Phone width: nothing sticks out sideways.
    b.client.set_window_size(390, 844).await.unwrap();
    b.client.goto(&format!("{ui}#/endpoints")).await.unwrap();
    b.find("#endpoints").await;
    assert_eq!(
        b.js("return document.documentElement.scrollWidth <= window.innerWidth + 1")
            .await,
        Value::Bool(true)
    );
    b.shot("endpoints-phone").await;
    b.client.close().await.unwrap();
}

/// The event-type catalog and the applications, managed in the dashboard:
/// a type added with its schema (and a malformed schema refused before it
/// is sent), archived and shown again; an application added (its name
/// rendered as text) and deleted.
#[tokio::test]
async fn the_catalog_and_applications_are_managed_in_the_dashboard() {
    let Some(driver) = chromedriver().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = server.tenant("catalog").await;
    let profile = tempfile::tempdir().unwrap();
    let mut b = Browser::open(&driver, profile.path()).await;
    let ui = format!("{}/ui/", server.base);
    b.client.goto(&ui).await.unwrap();
    b.sign_in(&key).await;
    b.find("#endpoints, main p").await;

    b.client.goto(&format!("{ui}#/catalog")).await.unwrap();
    b.find("#type-form").await;
    b.type_into("input[name=type_name]", "message.created")
        .await;
    b.type_into("textarea[name=type_schema]", "{not json").await;
    b.click("#type-form button[type=submit]").await;
    b.until(
        "the schema refused in the page",
        "return document.body.innerText.includes('The schema is not JSON')",
    )
    .await;
    b.js("document.querySelector('textarea[name=type_schema]').value = ''")
        .await;
    b.type_into(
        "textarea[name=type_schema]",
        r#"{"type": "object", "required": ["conversation_id"]}"#,
    )
    .await;
    b.type_into("textarea[name=type_example]", r#"{"conversation_id": 7}"#)
        .await;
    b.click("input[name=type_validate]").await;
    b.click("#type-form button[type=submit]").await;
    b.until(
        "the type listed as checked",
        "const r = document.querySelector('tr[data-type=\"message.created\"]'); return !!r && r.textContent.includes('yes')",
    )
    .await;
    b.shot("event-types").await;
    let (status, t) = server
        .call("GET", "/v1/event-types/message.created", &key, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(t["validate"], true);
    assert_eq!(t["schema"]["required"][0], "conversation_id");
    b.click_button("Archive").await;
    b.until(
        "the archived type hidden",
        "return !document.querySelector('tr[data-type=\"message.created\"]')",
    )
    .await;
    b.click_button("Show archived").await;
    b.until(
        "the archived type shown on request",
        "const r = document.querySelector('tr[data-type=\"message.created\"]'); return !!r && r.textContent.includes('archived')",
    )
    .await;

    b.client.goto(&format!("{ui}#/apps")).await.unwrap();
    b.find("#app-form").await;
    b.type_into("input[name=app_name]", "Zoë <b>dentist</b>")
        .await;
    b.type_into("input[name=app_uid]", "zoe-1").await;
    b.click("#app-form button[type=submit]").await;
    b.until(
        "the application listed, its name as text",
        "return [...document.querySelectorAll('#apps td')].some(td => td.textContent === 'Zoë <b>dentist</b>')",
    )
    .await;
    b.shot("applications").await;
    let (status, app) = server.call("GET", "/v1/apps/zoe-1", &key, None).await;
    assert_eq!(status, 200, "{app}");
    // A portal link for it: shown once, listed, revoked.
    b.click_button("Portal link").await;
    b.until(
        "the link shown once",
        "const i = document.querySelector('input.portal-url'); return !!i && i.value.includes('/ui/#portal=whp_')",
    )
    .await;
    let url = b
        .js("return document.querySelector('input.portal-url').value")
        .await;
    let token = url
        .as_str()
        .unwrap()
        .rsplit('=')
        .next()
        .unwrap()
        .to_string();
    let (status, _) = server.call("GET", "/v1/portal", &token, None).await;
    assert_eq!(status, 200, "the link works");
    b.until(
        "the link listed",
        "return !!document.querySelector('.portal-links li')",
    )
    .await;
    b.js("document.querySelector('.portal-links').open = true")
        .await;
    b.click(".portal-links li button").await;
    b.until(
        "the link gone from the list",
        "return !document.querySelector('.portal-links')",
    )
    .await;
    let (status, _) = server.call("GET", "/v1/portal", &token, None).await;
    assert_eq!(status, 401, "the link revoked");
    b.js("window.confirm = () => true").await;
    b.click_button("Delete").await;
    b.until(
        "the application gone",
        "return document.body.innerText.includes('No applications yet')",
    )
    .await;
    let (status, _) = server.call("GET", "/v1/apps/zoe-1", &key, None).await;
    assert_eq!(status, 404);
    b.client.close().await.unwrap();
}

/// The first characters of the endpoint's signing secret (never on the page).
async fn sub_secret_prefix(server: &Server, key: &str, sub_id: &str) -> String {
    let (_, s) = server
        .call(
            "GET",
            &format!("/v1/subscriptions/{sub_id}/secret"),
            key,
            None,
        )
        .await;
    s["secret"].as_str().unwrap()[..12].to_string()
}

/// Portal mode: a tenant hands a customer a link; in Chromium it opens the
/// dashboard on that application's endpoints only (the token leaves the
/// address bar for sessionStorage), the customer adds an endpoint and
/// sends it a test event, the tenant's pages are not offered and the API
/// refuses the token there; a read-only link shows no actions; revoked
/// and expired links are refused with a clear message.
#[tokio::test]
async fn a_portal_link_opens_one_application_in_the_dashboard() {
    let Some(driver) = chromedriver().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let receiver = Receiver::ok().await;
    let (_, key) = server.tenant("saas").await;
    for (name, uid) in [("Clinique Zoë", "clinic"), ("Other customer", "other")] {
        let (status, app) = server
            .call(
                "POST",
                "/v1/apps",
                &key,
                Some(json!({"name": name, "uid": uid})),
            )
            .await;
        assert_eq!(status, 201, "{app}");
    }
    let mine = server
        .subscribe(&key, json!({"url": format!("{}/clinic-existing", receiver.url()), "event_types": ["*"], "app": "clinic"}))
        .await;
    let theirs = server
        .subscribe(&key, json!({"url": format!("{}/other-secret-endpoint", receiver.url()), "event_types": ["*"], "app": "other"}))
        .await;
    let (status, link) = server
        .call(
            "POST",
            "/v1/apps/clinic/portal-links",
            &key,
            Some(json!({"expires_in": 600})),
        )
        .await;
    assert_eq!(status, 201, "{link}");
    let url = link["url"].as_str().unwrap();
    let token = link["token"].as_str().unwrap();

    let profile = tempfile::tempdir().unwrap();
    let mut b = Browser::open(&driver, profile.path()).await;
    b.client.goto(url).await.unwrap();
    b.until(
        "the application's endpoints",
        "return !!document.querySelector('#endpoints') && document.querySelector('h1').textContent.includes('Clinique Zoë')",
    )
    .await;
    b.shot("portal-endpoints").await;
    let page = b.js("return document.body.innerText").await;
    let page = page.as_str().unwrap();
    assert!(page.contains("/clinic-existing"), "{page}");
    assert!(!page.contains("/other-secret-endpoint"), "{page}");
    assert!(
        !page.contains("Applications") && !page.contains("Plugins"),
        "only the portal's pages are offered: {page}"
    );
    let href = b.js("return location.href").await;
    assert!(
        !href.as_str().unwrap().contains("whp_"),
        "the token left the address bar: {href}"
    );
    let stored = b.js("return sessionStorage.getItem('wasmhook.key')").await;
    assert_eq!(stored, token, "the token is this tab's credential");
    // The API refuses the token outside its application, from the page too.
    let answer = b
        .js(&format!(
            "return fetch('/v1/subscriptions/{}', {{headers: {{Authorization: 'Bearer ' + sessionStorage.getItem('wasmhook.key')}}}}).then(r => r.status)",
            theirs["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(answer, 404);
    let answer = b
        .js("return fetch('/v1/apps', {headers: {Authorization: 'Bearer ' + sessionStorage.getItem('wasmhook.key')}}).then(r => r.status)")
        .await;
    assert_eq!(answer, 403);
    // A tenant page by address lands back on the endpoints.
    b.client
        .goto(&format!("{}/ui/#/plugins", server.base))
        .await
        .unwrap();
    b.until(
        "back on the endpoints",
        "return location.hash === '#/endpoints' && !!document.querySelector('#endpoints')",
    )
    .await;

    // The customer adds an endpoint and sends it a test event.
    b.click_button("Add endpoint").await;
    b.find("#endpoint-form").await;
    assert!(
        b.js("return !document.querySelector('select[name=plugin]') && !document.querySelector('select[name=retry]')").await == Value::Bool(true),
        "the tenant's settings are not in the portal's form"
    );
    b.type_into("input[name=url]", &format!("{}/clinic-new", receiver.url()))
        .await;
    b.type_into("input[name=description]", "our CRM").await;
    b.click("#endpoint-form button[type=submit]").await;
    b.until("the new endpoint's page", "return document.querySelector('h1').textContent === 'Endpoint' && document.body.innerText.includes('/clinic-new')").await;
    let (_, subs) = server.call("GET", "/v1/subscriptions", &key, None).await;
    let added = subs
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["url"].as_str().unwrap().ends_with("/clinic-new"))
        .expect("the endpoint the portal added");
    assert_eq!(added["app_id"], mine["app_id"], "{added}");
    b.click_button("Send test event").await;
    b.until(
        "the test's result",
        "return document.body.innerText.includes('Test delivery')",
    )
    .await;
    b.shot("portal-endpoint").await;
    assert!(
        receiver
            .received()
            .iter()
            .any(|r| r.json()["data"]["subscription_id"] == added["id"]),
        "the test reached the customer's endpoint"
    );

    // Read-only: the same pages, no actions.
    let (_, viewer) = server
        .call(
            "POST",
            "/v1/apps/clinic/portal-links",
            &key,
            Some(json!({"read_only": true})),
        )
        .await;
    b.client
        .goto(viewer["url"].as_str().unwrap())
        .await
        .unwrap();
    b.until("the read-only portal", "return document.getElementById('portal-app').textContent.includes('read-only') && !!document.querySelector('#endpoints')").await;
    assert_eq!(
        b.js("return !!document.querySelector('a[href=\"#/endpoints/new\"]')")
            .await,
        Value::Bool(false)
    );
    b.client
        .goto(&format!(
            "{}/ui/#/endpoints/{}",
            server.base,
            mine["id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    b.until("the endpoint, read-only", "return document.querySelector('h1').textContent === 'Endpoint' && !!document.querySelector('#deliveries')").await;
    assert_eq!(
        b.js("return [...document.querySelectorAll('button')].map(x => x.textContent).filter(t => ['Rotate secret', 'Reveal secret', 'Delete', 'Send test event'].includes(t)).length").await,
        json!(0)
    );

    // Revoked, then expired: refused with a message that says so.
    let (status, _) = server
        .call(
            "DELETE",
            &format!(
                "/v1/apps/clinic/portal-links/{}",
                viewer["id"].as_str().unwrap()
            ),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 204);
    b.client.refresh().await.unwrap();
    b.until(
        "the revoked link refused",
        "return document.body.innerText.includes('expired or was revoked')",
    )
    .await;
    b.shot("portal-revoked").await;
    let (_, brief) = server
        .call(
            "POST",
            "/v1/apps/clinic/portal-links",
            &key,
            Some(json!({"expires_in": 1})),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    b.client.goto(brief["url"].as_str().unwrap()).await.unwrap();
    b.until(
        "the expired link refused",
        "return document.body.innerText.includes('expired or was revoked')",
    )
    .await;
    assert_eq!(
        b.js("return sessionStorage.getItem('wasmhook.key')").await,
        Value::Null
    );
    b.client.close().await.unwrap();
}
