//! The conformance suite (tests/tests/conformance.rs) run again over a mixed cluster: an
//! `hsmpool-hsmd` daemon, a SoftHSMv2 token and an NSS softokn database as the members of the
//! token (`HSMPOOL_TEST_MEMBERS=mixed`, see `hsmpool_tests::raw::Fixture`), judged here
//! (`hsmpool_tests::conformance::judge`): every test passes except those listed in
//! [`DIFFERENCES`], each with what a member does otherwise, and each of those must fail.

/// Conformance tests that fail over the mixed cluster, and why. (Fewer than over SoftHSMv2
/// alone: a call SoftHSMv2 refuses for what it asks, as RSA-OAEP with SHA-256, is done by
/// another member.)
const DIFFERENCES: &[(&str, &str)] = &[
    ("a_missing_mechanism_parameter_is_refused_at_init", "SoftHSMv2 has no CKM_SHA_1_HMAC_GENERAL: the token does not offer it (CKR_MECHANISM_INVALID before its parameter is looked at)"),
    ("cloudhsm::cloudhsm_aes_gcm_prepends_the_iv_it_makes", "AWS CloudHSM's vendor mechanisms are our simulator's, not SoftHSMv2's or NSS's: the token does not offer them"),
    ("cloudhsm::cloudhsm_aes_key_wraps_match_rfc_3394_and_5649", "AWS CloudHSM's vendor mechanisms are our simulator's, not SoftHSMv2's or NSS's"),
    ("cloudhsm::cloudhsm_sp800_108_counter_kdf_matches_an_independent_computation", "AWS CloudHSM's vendor mechanisms are our simulator's, not SoftHSMv2's or NSS's"),
    ("cloudhsm::cloudhsm_x931_key_pair_generation", "neither SoftHSMv2 nor NSS has CKM_RSA_X9_31_KEY_PAIR_GEN"),
    ("hmac_digest_and_random", "SoftHSMv2 takes HMAC keys no shorter than the hash (the token's sizes are every member's: CKR_KEY_SIZE_RANGE at C_SignInit)"),
    ("op_state::a_final_call_after_a_single_part_length_answer_is_refused_and_ends_the_operation", "its HMAC key is shorter than SoftHSMv2 takes (CKR_KEY_SIZE_RANGE)"),
    ("op_state::a_single_part_call_after_a_final_length_query_is_refused_and_ends_the_operation", "its HMAC key is shorter than SoftHSMv2 takes (CKR_KEY_SIZE_RANGE)"),
    ("op_state::a_single_part_call_after_an_update_is_refused_and_ends_the_operation", "its HMAC key is shorter than SoftHSMv2 takes (CKR_KEY_SIZE_RANGE)"),
    ("op_state::an_update_after_a_final_length_query_is_refused_and_the_kept_result_is_intact", "its HMAC key is shorter than SoftHSMv2 takes (CKR_KEY_SIZE_RANGE)"),
    ("op_state::an_update_after_a_single_part_length_query_is_refused_and_the_operation_goes_on", "its HMAC key is shorter than SoftHSMv2 takes (CKR_KEY_SIZE_RANGE)"),
    ("op_state::verify_has_no_length_query_and_ends_with_its_single_part_call", "its HMAC key is shorter than SoftHSMv2 takes (CKR_KEY_SIZE_RANGE)"),
    ("self_signed_certificates_are_presented_read_only_and_verify", "NSS softokn cannot restrict a key's mechanisms (no CKA_ALLOWED_MECHANISMS), so the test's PSS-only pair is refused on a cluster with an NSS member (CKR_TEMPLATE_INCONSISTENT)"),
    ("templates::token_only_attributes_are_read_only_in_every_application_template", "its derive mechanism is not one SoftHSMv2 offers (CKR_MECHANISM_INVALID before the template is looked at)"),
    ("five_wrong_pins_lock_the_user_until_the_so_resets_it", "neither SoftHSMv2 nor NSS softokn ever locks a PIN"),
];

#[test]
fn the_conformance_suite_over_a_mixed_cluster_differs_only_where_listed() {
    hsmpool_tests::require_tool("softhsm2-util");
    hsmpool_tests::conformance::judge(
        "mixed",
        "a mixed cluster (hsmpool-hsmd, SoftHSMv2, NSS softokn)",
        DIFFERENCES,
    );
}
