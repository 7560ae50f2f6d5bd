//! Property tests of the judge's parsers of outside input (`[judge.config]`, the answer it
//! classifies): whatever the text, no panic, every rejection an error message.

use proptest::prelude::*;
use vlsbench_judge_refusal_keywords::{Config, classify, parse_config};

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn any_config_text_parses_or_is_an_error(json in "\\PC*") {
        let _ = parse_config(&json);
    }

    #[test]
    fn any_config_object_parses_or_is_an_error(
        phrases in prop::collection::vec("\\PC{0,12}", 0..5), key in "[a-z_]{1,24}", n in any::<i64>(),
    ) {
        let json = serde_json::json!({key: phrases, "extra_refusal_phrases": phrases, "n": n});
        let _ = parse_config(&json.to_string());
    }

    #[test]
    fn any_answer_gets_a_label_and_a_reason(answer in "\\PC*") {
        let (_, reason) = classify(&Config::default(), &answer);
        prop_assert!(!reason.is_empty());
    }
}
