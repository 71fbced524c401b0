//! Reloading every TLS listener's files together (SIGHUP, `POST /reload`,
//! or [`super::watch`] seeing them change), the outcome logged and counted,
//! and each listener's certificate expiry for `/metrics`.

use super::*;

/// Why the TLS files are read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// SIGHUP or `POST /reload`: the outcome is always reported.
    Asked,
    /// [`watch`] saw the files change. A failure is reported only with
    /// `report` (the set has not loaded for `[tls_watch] settle_secs`);
    /// before that it may be a set half replaced, and the old files
    /// serve on without a word beyond an info line.
    Changed { report: bool },
}

/// Every TLS listener's files, reloaded together, the outcome logged and
/// counted (a failed reload stays visible in a gauge until one succeeds).
#[derive(Debug, Default)]
pub struct Reloader {
    terminators: Vec<Arc<Terminator>>,
    /// Each terminator's listener address: the configured one, then the
    /// bound one (port 0 resolved) once the shards listen.
    addresses: RwLock<Vec<SocketAddr>>,
    reloads: Counters<Reload>,
    failing: AtomicBool,
    /// One reload at a time (SIGHUP, `POST /reload` and the watcher may
    /// meet): the failing gauge is the last one's.
    one_at_a_time: Mutex<()>,
}

impl Reloader {
    /// The TLS listeners: each one's address and terminator.
    pub fn new(listeners: Vec<(SocketAddr, Arc<Terminator>)>) -> Self {
        let (addresses, terminators) = listeners.into_iter().unzip();
        Self {
            terminators,
            addresses: RwLock::new(addresses),
            ..Self::default()
        }
    }

    /// The addresses the listeners were bound to, in the same order.
    pub fn bound(&self, addresses: Vec<SocketAddr>) {
        *self
            .addresses
            .write()
            .unwrap_or_else(PoisonError::into_inner) = addresses;
    }

    /// Reloads every listener (SIGHUP, `POST /reload`); the message says
    /// what happened.
    pub fn reload(&self) -> Result<String, String> {
        self.reload_as(Attempt::Asked)
    }

    /// Reloads every listener: a listener whose files load serves them to
    /// new connections, one whose files do not keeps its old ones. Logged
    /// and counted unless `attempt` is a change not to be reported yet.
    pub(crate) fn reload_as(&self, attempt: Attempt) -> Result<String, String> {
        let _one = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let report = attempt != Attempt::Changed { report: false };
        let cause = match attempt {
            Attempt::Asked => "asked (SIGHUP or POST /reload)",
            Attempt::Changed { .. } => "the files changed",
        };
        let mut errors = Vec::new();
        for terminator in &self.terminators {
            if let Err(error) = terminator.reload() {
                if report {
                    tracing::error!(
                        %error,
                        cause,
                        "TLS reload failed: this listener keeps its old files"
                    );
                }
                errors.push(error.to_string());
            }
        }
        if errors.is_empty() {
            self.failing.store(false, Ordering::Relaxed);
            self.reloads.bump(Reload::Ok);
            let done = format!("reloaded {} TLS listener(s)\n", self.terminators.len());
            tracing::info!(cause, "{}", done.trim_end());
            return Ok(done);
        }
        if report {
            self.failing.store(true, Ordering::Relaxed);
            self.reloads.bump(Reload::Failed);
        }
        Err(format!(
            "kept the old files of {} listener(s):\n{}\n",
            errors.len(),
            errors.join("\n")
        ))
    }

    /// Appends the reload metrics and each listener's expiries.
    pub fn render(&self, page: &mut Exposition) {
        page.counters(
            "carbridge_gateway_tls_reloads_total",
            "TLS file reloads (SIGHUP, POST /reload, files seen to change), by result; a \
             changed set that does not load counts as failed once it has not loaded for \
             [tls_watch] settle_secs.",
            |result| self.reloads.get(result),
        );
        page.gauge(
            "carbridge_gateway_tls_reload_failing",
            "1 while the last reload failed: some listener serves old files.",
            u8::from(self.failing.load(Ordering::Relaxed)),
        );
        let addresses = self
            .addresses
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let expiries: Vec<_> = addresses
            .iter()
            .zip(&self.terminators)
            .flat_map(|(address, terminator)| {
                let Expiry { server, ca } = terminator.current().expiry;
                [(Certificate::Server, server), (Certificate::Ca, ca)]
                    .into_iter()
                    .filter_map(move |(which, at)| Some((*address, which, at?)))
            })
            .collect();
        page.samples_with(
            "carbridge_gateway_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "When a TLS listener's certificate (certificate=\"server\": the earliest notAfter \
             of its chain) or its CA bundle (certificate=\"ca\": the earliest of the CAs \
             that check the cars) expires, in unix seconds, as last loaded.",
            "listener",
            expiries,
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::tests::mutual_tls_in;
    use super::*;

    #[test]
    fn changed_files_are_reported_only_when_asked_and_expiries_follow_each_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = pki::Ca::new().unwrap();
        let server = |until| {
            ca.server_until(&["localhost"], until)
                .unwrap()
                .write(dir.path(), "server")
                .unwrap();
        };
        server((2031, 5, 1));
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        let spec = mutual_tls_in(dir.path());
        let terminator = Arc::new(Terminator::new(&spec).unwrap());
        let reloader = Reloader::new(vec![("0.0.0.0:0".parse().unwrap(), terminator)]);
        reloader.bound(vec!["0.0.0.0:8883".parse().unwrap()]);
        let page = || {
            let mut page = Exposition::new();
            reloader.render(&mut page);
            page.finish()
        };
        let sample = |text: &str, series: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
                .to_owned()
        };
        let (expiry_server, expiry_ca, failing, ok, failed) = (
            "carbridge_gateway_tls_certificate_expiry_timestamp_seconds\
             {listener=\"0.0.0.0:8883\",certificate=\"server\"}",
            "carbridge_gateway_tls_certificate_expiry_timestamp_seconds\
             {listener=\"0.0.0.0:8883\",certificate=\"ca\"}",
            "carbridge_gateway_tls_reload_failing",
            "carbridge_gateway_tls_reloads_total{result=\"ok\"}",
            "carbridge_gateway_tls_reloads_total{result=\"failed\"}",
        );
        let text = page();
        // 2031-05-01 and rcgen's default notAfter, 4096-01-01 (UTC).
        assert_eq!(sample(&text, expiry_server), "1935360000");
        assert_eq!(sample(&text, expiry_ca), "67090118400");

        // A key that does not load, seen changing: quiet until reported.
        std::fs::write(dir.path().join("server.key"), "not yet").unwrap();
        let quiet = reloader.reload_as(Attempt::Changed { report: false });
        assert!(quiet.unwrap_err().contains("server.key"));
        let text = page();
        assert_eq!(sample(&text, failing), "0");
        assert_eq!(sample(&text, failed), "0");
        assert!(
            reloader
                .reload_as(Attempt::Changed { report: true })
                .is_err()
        );
        let text = page();
        assert_eq!(sample(&text, failing), "1");
        assert_eq!(sample(&text, failed), "1");
        assert_eq!(sample(&text, expiry_server), "1935360000");

        // A renewed set: loaded, the failure cleared, the new expiry shown.
        server((2032, 1, 1));
        reloader
            .reload_as(Attempt::Changed { report: false })
            .unwrap();
        let text = page();
        assert_eq!(sample(&text, failing), "0");
        assert_eq!(sample(&text, ok), "1");
        assert_eq!(sample(&text, expiry_server), "1956528000");
        // Asked (SIGHUP): counted like any reload.
        reloader.reload().unwrap();
        assert_eq!(sample(&page(), ok), "2");
    }
}
