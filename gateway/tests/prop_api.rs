//! Property tests for the operator API's parsers: Harbor webhook bodies
//! (Default and CloudEvents formats) and Dragonfly/Harbor preheat job
//! bodies (`POST /oapi/v1/jobs`).
//!
//! Bodies come from Harbor (or whoever holds the API token, or whoever
//! stole it): arbitrary and mutated bodies never panic, a refusal is clear
//! and bounded (it is logged and sent back), and what is accepted names an
//! image in the grammar, exactly as the body spelled it.
#![allow(clippy::unwrap_used)]

use customs_gateway::api::{WebhookRequest, parse_job_request, parse_webhook};
use customs_gateway::preheat::{PreheatSpec, Scope};
use customs_mirror::http::RegistryResolver;
use customs_mirror::warm::PlatformFilter;
use customs_protocol::{Digest, Reference, RegistryHost};
use proptest::prelude::*;
use std::fmt::Display;

#[path = "../../protocol/tests/kit/prop_kit.rs"]
mod prop_kit;
use prop_kit::{edits, mutate};

/// A refusal is clear and bounded (see [`prop_kit::assert_clear_within`]).
fn assert_clear(e: &impl Display) {
    prop_kit::assert_clear_within(e, MAX_ERROR_LEN);
}

/// Cases per property (a few seconds for the whole file).
const CASES: u32 = 256;

/// Longest error text any body can provoke.
const MAX_ERROR_LEN: usize = 1024;

/// The API's body limit (`MAX_BODY` in api.rs): what an attacker can send.
const MAX_BODY: usize = 1024 * 1024;

const JOB: &str = include_str!("../../testdata/harbor/provider-create-job.json");
const PUSH_DEFAULT: &str = include_str!("../../testdata/harbor/webhook-default-push.json");
const PUSH_CLOUDEVENTS: &str = include_str!("../../testdata/harbor/webhook-cloudevents-push.json");
const DELETE: &str = include_str!("../../testdata/harbor/webhook-default-delete.json");

/// The resolver the server uses, with a default registry.
fn resolve(host: &str) -> Result<RegistryHost, String> {
    RegistryResolver {
        default: "registry.local:5000".parse().unwrap(),
    }
    .resolve(Some(host))
    .map_err(|e| e.to_string())
}

fn fill(template: &str, registry: &str, repo: &str, tag: &str, digest: &str) -> String {
    template
        .replace("{{REGISTRY}}", registry)
        .replace("{{REPO}}", repo)
        .replace("{{TAG}}", tag)
        .replace("{{DIGEST}}", digest)
        .replace("{{REPO_NAME}}", repo.rsplit('/').next().unwrap_or(repo))
        .replace("{{NAMESPACE}}", repo.split('/').next().unwrap_or(repo))
        .replace("{{TOKEN}}", "secret")
}

/// Arbitrary JSON, biased towards the fields these bodies carry.
fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(Into::into),
        any::<i64>().prop_map(Into::into),
        any::<u64>().prop_map(Into::into),
        "\\PC{0,30}".prop_map(Into::into),
        Just("preheat".into()),
        Just("image".into()),
        Just("PUSH_ARTIFACT".into()),
        Just("harbor.artifact.pushed".into()),
        Just("http://r.io/v2/a/manifests/latest".into()),
        Just("r.io/a/b:v1".into()),
        Just("count".into()),
        Just("percentage".into()),
    ];
    let key = prop_oneof![
        Just("type".to_owned()),
        Just("args".to_owned()),
        Just("url".to_owned()),
        Just("scope".to_owned()),
        Just("platform".to_owned()),
        Just("count".to_owned()),
        Just("percentage".to_owned()),
        Just("headers".to_owned()),
        Just("event_data".to_owned()),
        Just("data".to_owned()),
        Just("resources".to_owned()),
        Just("resource_url".to_owned()),
        Just("digest".to_owned()),
        Just("tag".to_owned()),
        "[a-z_]{1,8}",
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Into::into),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What every accepted preheat must satisfy.
fn check_spec(spec: &PreheatSpec) {
    // Typed all the way: registry, repository and reference re-parse.
    assert_eq!(
        spec.image
            .registry
            .as_str()
            .parse::<RegistryHost>()
            .unwrap(),
        spec.image.registry
    );
    assert!(!spec.image.repository.as_str().contains(".."));
    match &spec.reference {
        Reference::Tag(t) => assert!(t.as_str().len() <= 128),
        Reference::Digest(d) => assert_eq!(d.to_string().parse::<Digest>().unwrap(), *d),
    }
    if let PlatformFilter::Only(p) = &spec.platform {
        assert!(p.split('/').count() >= 2, "{p:?}");
    }
    match spec.scope {
        Scope::Count(n) => assert!(n > 0),
        Scope::Percentage(p) => assert!((1..=100).contains(&p)),
        _ => {}
    }
}

fn check_webhook(r: &Result<WebhookRequest, String>) {
    match r {
        Ok(WebhookRequest::Ignored(kind)) => assert!(kind.chars().count() <= 129),
        Ok(WebhookRequest::Push { pushed, .. }) => pushed.iter().for_each(|(s, _)| check_spec(s)),
        Err(e) => assert_clear(e),
    }
}

fn names() -> impl Strategy<Value = (String, String, String, Digest)> {
    (
        prop_oneof![
            Just("registry.local:5000".to_owned()),
            "[a-z]{1,8}\\.[a-z]{2,3}(:[1-9][0-9]{1,4})?",
        ],
        "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
        "[A-Za-z0-9_][A-Za-z0-9._-]{0,20}",
        "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}").parse().unwrap()),
    )
        .prop_filter("port in range", |(h, ..)| h.parse::<RegistryHost>().is_ok())
}

fn scope() -> impl Strategy<Value = Scope> {
    prop_oneof![
        Just(Scope::SinglePeer),
        Just(Scope::AllPeers),
        Just(Scope::SeedPeers),
        (1usize..10).prop_map(Scope::Count),
        (1u8..=100).prop_map(Scope::Percentage),
    ]
}

// ---------------------------------------------------------------- jobs

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn job_bodies_of_arbitrary_bytes_are_refused_clearly(
        raw in proptest::collection::vec(any::<u8>(), 0..400),
        doc in arbitrary_json(),
        use_raw in any::<bool>(),
    ) {
        let body = if use_raw { raw } else { serde_json::to_vec(&doc).unwrap() };
        match parse_job_request(&resolve, &body) {
            Ok((spec, _)) => check_spec(&spec),
            Err(e) => assert_clear(&e),
        }
    }

    /// Harbor's real request, filled with any valid names, is accepted for
    /// exactly the image its URL names.
    #[test]
    fn the_harbor_job_request_round_trips(
        (registry, repo, tag, digest) in names(),
        by_digest in any::<bool>(),
        scope in prop_oneof![Just("all_peers"), Just("single_peer"), Just("single_seed_peer"), Just("")],
        platform in prop_oneof![Just(""), Just("linux/amd64"), Just("linux/arm64/v8")],
    ) {
        let reference = if by_digest { digest.to_string() } else { tag.clone() };
        let mut job: serde_json::Value =
            serde_json::from_str(&fill(JOB, &registry, &repo, &reference, "")).unwrap();
        job["args"]["scope"] = scope.into();
        job["args"]["platform"] = platform.into();
        let body = serde_json::to_vec(&job).unwrap();
        let (spec, args) = parse_job_request(&resolve, &body).unwrap();
        check_spec(&spec);
        prop_assert_eq!(spec.image.registry.as_str(), registry.as_str());
        prop_assert_eq!(spec.image.repository.as_str(), repo.as_str());
        prop_assert_eq!(spec.reference.to_string(), reference);
        prop_assert_eq!(args, job["args"].clone());
    }

    #[test]
    fn mutated_job_requests_never_panic(
        (registry, repo, tag, _) in names(),
        edits in edits(),
    ) {
        let body = mutate(fill(JOB, &registry, &repo, &tag, "").as_bytes(), &edits);
        match parse_job_request(&resolve, &body) {
            Ok((spec, _)) => check_spec(&spec),
            Err(e) => assert_clear(&e),
        }
    }

    /// Hostile values where the job request has strings: path tricks in
    /// the URL, unknown scopes, huge counts, platforms without an arch.
    #[test]
    fn hostile_job_args_are_refused_or_typed(
        url in prop_oneof![
            "\\PC{0,60}",
            "(http|https|file|ftp)://[a-z.:0-9@]{0,20}/v2/[a-zA-Z0-9./%_-]{0,40}/manifests/[a-zA-Z0-9:._-]{0,70}",
            Just("http://r.io/v2/../etc/manifests/latest".to_owned()),
            Just("http://r.io/v2/a/manifests/../../x".to_owned()),
            Just("http://r.io/v2/a%2f..%2fb/manifests/v1".to_owned()),
            Just("http://user:pass@r.io:99999/v2/a/manifests/v1".to_owned()),
        ],
        scope in proptest::option::of(prop_oneof![Just("count".to_owned()), Just("percentage".to_owned()), "\\PC{0,20}"]),
        count in proptest::option::of(any::<u64>()),
        percentage in proptest::option::of(any::<u64>()),
        platform in proptest::option::of("\\PC{0,20}"),
        kind in proptest::option::of(prop_oneof![Just("image".to_owned()), "\\PC{0,10}"]),
    ) {
        let mut args = serde_json::json!({"url": url});
        if let Some(s) = scope { args["scope"] = s.into(); }
        if let Some(c) = count { args["count"] = c.into(); }
        if let Some(p) = percentage { args["percentage"] = p.into(); }
        if let Some(p) = platform { args["platform"] = p.into(); }
        if let Some(k) = kind { args["type"] = k.into(); }
        let body = serde_json::to_vec(&serde_json::json!({"type": "preheat", "args": args})).unwrap();
        match parse_job_request(&resolve, &body) {
            Ok((spec, _)) => check_spec(&spec),
            Err(e) => assert_clear(&e),
        }
    }

    /// Values as large as the body limit allows are never echoed whole.
    #[test]
    fn huge_job_values_give_bounded_errors(
        filler in "[A-Za-z0-9]{1,8}",
        len in 1_000usize..100_000,
        field in 0usize..6,
    ) {
        let big = filler.repeat(len / filler.len());
        let body = match field {
            0 => serde_json::json!({"type": big}),
            1 => serde_json::json!({"type": "preheat", "args": {"url": big}}),
            2 => serde_json::json!({"type": "preheat", "args": {"url": format!("http://r.io/v2/{big}/manifests/v1")}}),
            3 => serde_json::json!({"type": "preheat", "args": {"url": "http://r.io/v2/a/manifests/v1", "scope": big}}),
            4 => serde_json::json!({"type": "preheat", "args": {"url": "http://r.io/v2/a/manifests/v1", "platform": big}}),
            _ => serde_json::json!({"type": "preheat", "args": {"type": big, "url": 1}}),
        };
        let e = parse_job_request(&resolve, &serde_json::to_vec(&body).unwrap()).unwrap_err();
        assert_clear(&e);
    }
}

// ------------------------------------------------------------- webhooks

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn webhook_bodies_of_arbitrary_bytes_are_handled(
        raw in proptest::collection::vec(any::<u8>(), 0..400),
        doc in arbitrary_json(),
        use_raw in any::<bool>(),
        scope in scope(),
    ) {
        let body = if use_raw { raw } else { serde_json::to_vec(&doc).unwrap() };
        check_webhook(&parse_webhook(&resolve, scope, &body));
    }

    /// Harbor's real push events (both formats), filled with any valid
    /// names: one preheat per resource, the digest winning over the tag.
    #[test]
    fn harbor_push_events_round_trip(
        (registry, repo, tag, digest) in names(),
        cloudevents in any::<bool>(),
        with_digest in any::<bool>(),
        scope in scope(),
        copies in 1usize..4,
    ) {
        let template = if cloudevents { PUSH_CLOUDEVENTS } else { PUSH_DEFAULT };
        let d = if with_digest { digest.to_string() } else { String::new() };
        let mut event: serde_json::Value =
            serde_json::from_str(&fill(template, &registry, &repo, &tag, &d)).unwrap();
        let data = if cloudevents { "data" } else { "event_data" };
        let one = event[data]["resources"][0].clone();
        event[data]["resources"] = vec![one; copies].into();
        let r = parse_webhook(&resolve, scope, &serde_json::to_vec(&event).unwrap()).unwrap();
        let WebhookRequest::Push { pushed, .. } = r else { panic!("a push was ignored") };
        prop_assert_eq!(pushed.len(), copies);
        for (spec, url) in &pushed {
            check_spec(spec);
            prop_assert_eq!(spec.image.registry.as_str(), registry.as_str());
            prop_assert_eq!(spec.image.repository.as_str(), repo.as_str());
            let want = if with_digest { digest.to_string() } else { tag.clone() };
            prop_assert_eq!(spec.reference.to_string(), want);
            // Pushed by digest: the tag beside it is warmed too; pushed by
            // tag alone, the tag is the reference.
            let warmed = spec.tag.as_ref().map(|t| t.to_string());
            prop_assert_eq!(warmed, with_digest.then(|| tag.clone()));
            prop_assert_eq!(spec.scope, scope);
            prop_assert_eq!(url, &format!("{registry}/{repo}:{tag}"));
        }
    }

    /// Non-push events are acknowledged and start nothing.
    #[test]
    fn other_events_are_ignored(
        (registry, repo, tag, digest) in names(),
        kind in "\\PC{0,40}",
    ) {
        prop_assume!(kind != "PUSH_ARTIFACT" && kind != "harbor.artifact.pushed");
        let r = parse_webhook(&resolve, Scope::SinglePeer,
            fill(DELETE, &registry, &repo, &tag, &digest.to_string()).as_bytes()).unwrap();
        prop_assert!(matches!(r, WebhookRequest::Ignored(k) if k == "DELETE_ARTIFACT"));
        let mut event: serde_json::Value = serde_json::from_str(PUSH_DEFAULT).unwrap();
        event["type"] = kind.clone().into();
        let r = parse_webhook(&resolve, Scope::SinglePeer, &serde_json::to_vec(&event).unwrap()).unwrap();
        prop_assert!(matches!(r, WebhookRequest::Ignored(k) if k == kind));
    }

    #[test]
    fn mutated_webhooks_never_panic(
        (registry, repo, tag, digest) in names(),
        cloudevents in any::<bool>(),
        edits in edits(),
    ) {
        let template = if cloudevents { PUSH_CLOUDEVENTS } else { PUSH_DEFAULT };
        let body = mutate(fill(template, &registry, &repo, &tag, &digest.to_string()).as_bytes(), &edits);
        check_webhook(&parse_webhook(&resolve, Scope::AllPeers, &body));
    }

    /// Hostile resources: any `resource_url`, digest and tag strings.
    #[test]
    fn hostile_resources_are_refused_or_typed(
        resources in proptest::collection::vec((
            proptest::option::of(prop_oneof![
                "\\PC{0,60}",
                "[a-z.:0-9]{0,15}/[a-zA-Z0-9./_:@-]{0,50}",
                Just("r.io/../etc:v1".to_owned()),
                Just("r.io/a@sha256:zz".to_owned()),
                Just("/abs:v1".to_owned()),
            ]),
            proptest::option::of(prop_oneof!["\\PC{0,20}", "sha256:[0-9a-f]{60,66}"]),
            proptest::option::of("\\PC{0,20}"),
        ), 0..4),
    ) {
        let list: Vec<serde_json::Value> = resources.into_iter().map(|(url, digest, tag)| {
            let mut r = serde_json::json!({});
            if let Some(u) = url { r["resource_url"] = u.into(); }
            if let Some(d) = digest { r["digest"] = d.into(); }
            if let Some(t) = tag { r["tag"] = t.into(); }
            r
        }).collect();
        let body = serde_json::json!({"type": "PUSH_ARTIFACT", "event_data": {"resources": list}});
        check_webhook(&parse_webhook(&resolve, Scope::SinglePeer, &serde_json::to_vec(&body).unwrap()));
    }

    #[test]
    fn huge_webhook_values_give_bounded_errors(
        filler in "[A-Za-z0-9]{1,8}",
        len in 1_000usize..100_000,
        field in 0usize..4,
    ) {
        let big = filler.repeat(len / filler.len());
        let body = match field {
            0 => serde_json::json!({"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": big}]}}),
            1 => serde_json::json!({"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": format!("r.io/{big}:v1")}]}}),
            2 => serde_json::json!({"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": "r.io/a", "tag": big}]}}),
            _ => serde_json::json!({"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": format!("{big}/a:v1"), "digest": big}]}}),
        };
        let e = parse_webhook(&resolve, Scope::SinglePeer, &serde_json::to_vec(&body).unwrap()).unwrap_err();
        assert_clear(&e);
        // An ignored event type of any size is acknowledged with a clipped name.
        let r = parse_webhook(&resolve, Scope::SinglePeer,
            &serde_json::to_vec(&serde_json::json!({"type": big})).unwrap()).unwrap();
        prop_assert!(matches!(r, WebhookRequest::Ignored(k) if k.chars().count() <= 129));
    }
}

#[test]
fn bodies_at_the_limit_are_handled_quickly() {
    // A body as large as the API accepts, made of one deep structure, many
    // resources, or one huge string: handled (refused or parsed) in well
    // under a second, without a stack overflow.
    let deep = format!("{}{}", "[".repeat(MAX_BODY / 2), "]".repeat(MAX_BODY / 2));
    let resource = r#"{"resource_url":"r.io/a:v1","tag":"v1"},"#;
    let many = format!(
        r#"{{"type":"PUSH_ARTIFACT","event_data":{{"resources":[{}{{"resource_url":"r.io/a:v1","tag":"v1"}}]}}}}"#,
        resource.repeat(MAX_BODY / resource.len() - 1)
    );
    let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(MAX_BODY));
    for body in [deep.as_bytes(), many.as_bytes(), long.as_bytes()] {
        let t = std::time::Instant::now();
        check_webhook(&parse_webhook(&resolve, Scope::SinglePeer, body));
        if let Err(e) = parse_job_request(&resolve, body) {
            assert_clear(&e);
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
    }
}

/// A job URL that spells out its scheme's default port names the registry
/// with that port (`url` would drop it and name another registry).
#[test]
fn an_explicit_default_port_names_the_registry_with_it() {
    for registry in ["reg.example:80", "reg.example:443"] {
        let body = fill(JOB, registry, "team/app", "v1", "");
        let (spec, _) = parse_job_request(&resolve, body.as_bytes()).unwrap();
        assert_eq!(spec.image.registry.as_str(), registry);
    }
}
