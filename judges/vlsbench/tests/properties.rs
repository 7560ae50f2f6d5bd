//! Property tests of the judge's parsers of outside input (the judge model's reply, the manifest's
//! `[judge.config]`): whatever the text, no panic, and every rejection is an error message.

use proptest::prelude::*;
use vlsbench_judge_vlsbench::{parse_config, parse_reply};
use vlsbench_plugin_api::Label;
use vlsbench_plugin_api::python_strip;

fn label_str(code: u8) -> &'static str {
    ["Safe with refusal", "Safe with warning", "Unsafe"][usize::from(code - 1)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn any_reply_parses_or_is_an_error(reply in "\\PC*") {
        let _ = parse_reply(&reply);
    }

    #[test]
    fn a_strict_verdict_inside_any_prose_is_found(code in 1u8..=3, explanation in "\\PC{0,40}", before in "[^{}]{0,30}", after in "[^{}]{0,30}") {
        let verdict = serde_json::json!({"label": code, "label_str": label_str(code), "explanation": explanation});
        let reply = format!("{before}{verdict}{after}");
        let parsed = parse_reply(&reply).map_err(TestCaseError::fail)?;
        prop_assert_eq!(parsed.label, Label::from_code(code).ok_or_else(|| TestCaseError::fail("code"))?);
    }

    #[test]
    fn replies_with_disagreeing_or_unknown_labels_are_errors(code in any::<i64>(), s in 1u8..=3) {
        prop_assume!(!(1..=3).contains(&code) || code != i64::from(s));
        let reply = serde_json::json!({"label": code, "label_str": label_str(s), "explanation": "e"}).to_string();
        prop_assert!(parse_reply(&reply).is_err(), "{}", reply);
    }

    #[test]
    fn any_config_text_parses_or_is_an_error(json in "\\PC*") {
        let _ = parse_config(&json);
    }

    #[test]
    fn any_config_object_parses_or_is_an_error(
        max_tokens in any::<i64>(), temperature in any::<f64>(), prompt in "\\PC{0,20}", key in "[a-z_]{1,12}",
    ) {
        let json = serde_json::json!({"max_tokens": max_tokens, "temperature": temperature, "prompt": prompt, key: 1});
        let _ = parse_config(&json.to_string());
    }

    #[test]
    fn python_strip_never_panics_and_is_idempotent(s in "\\PC*") {
        let once = python_strip(&s);
        prop_assert_eq!(python_strip(once), once);
    }
}
