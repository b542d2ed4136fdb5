//! The conformance suite (tests/tests/conformance.rs) run again with three SoftHSMv2 tokens as
//! the members of the token (`HSMPOOL_TEST_MEMBERS=softhsm`, see `hsmpool_tests::raw::Fixture`),
//! judged here (`hsmpool_tests::conformance::judge`): every test passes except those listed in
//! [`DIFFERENCES`], each with what SoftHSMv2 2.6 does otherwise, and each of those must fail.

/// Conformance tests that fail over SoftHSMv2 members, and why.
const DIFFERENCES: &[(&str, &str)] = &[
    ("a_missing_mechanism_parameter_is_refused_at_init", "SoftHSMv2 has no CKM_SHA_1_HMAC_GENERAL: the token does not offer it (CKR_MECHANISM_INVALID before its parameter is looked at)"),
    ("aes_gcm_and_cbc_pad_single_and_multi_part", "SoftHSMv2 answers a GCM tag that does not verify with CKR_GENERAL_ERROR, not CKR_ENCRYPTED_DATA_INVALID"),
    ("cloudhsm::cloudhsm_aes_gcm_prepends_the_iv_it_makes", "AWS CloudHSM's vendor mechanisms are our simulator's, not SoftHSMv2's"),
    ("cloudhsm::cloudhsm_aes_key_wraps_match_rfc_3394_and_5649", "AWS CloudHSM's vendor mechanisms are our simulator's, not SoftHSMv2's"),
    ("cloudhsm::cloudhsm_login_with_cu_name_and_password", "SoftHSMv2 has no named crypto users (PIN name:password)"),
    ("cloudhsm::cloudhsm_sp800_108_counter_kdf_matches_an_independent_computation", "AWS CloudHSM's vendor mechanisms are our simulator's, not SoftHSMv2's"),
    ("cloudhsm::cloudhsm_x931_key_pair_generation", "SoftHSMv2 has no CKM_RSA_X9_31_KEY_PAIR_GEN"),
    ("hmac_digest_and_random", "SoftHSMv2 takes HMAC keys no shorter than the hash (CKR_KEY_SIZE_RANGE at C_SignInit)"),
    ("key_policy::secret_keys_keep_the_template_rule_and_their_usages_only_shrink", "SoftHSMv2's key policy lets a secret key's usages grow"),
    ("key_policy::the_providers_rsa_template_is_accepted_and_the_pair_cannot_leak_a_key", "SoftHSMv2 refuses the OAEP parameters of the test's wrap (SHA-1 only) before our policy's answer"),
    ("op_state::a_final_call_after_a_single_part_length_answer_is_refused_and_ends_the_operation", "its HMAC key is shorter than SoftHSMv2 takes (CKR_KEY_SIZE_RANGE)"),
    ("op_state::a_single_part_call_after_a_final_length_query_is_refused_and_ends_the_operation", "its HMAC key is shorter than SoftHSMv2 takes (CKR_KEY_SIZE_RANGE)"),
    ("op_state::a_single_part_call_after_an_update_is_refused_and_ends_the_operation", "its HMAC key is shorter than SoftHSMv2 takes (CKR_KEY_SIZE_RANGE)"),
    ("op_state::an_update_after_a_final_length_query_is_refused_and_the_kept_result_is_intact", "its HMAC key is shorter than SoftHSMv2 takes (CKR_KEY_SIZE_RANGE)"),
    ("op_state::an_update_after_a_single_part_length_query_is_refused_and_the_operation_goes_on", "its HMAC key is shorter than SoftHSMv2 takes (CKR_KEY_SIZE_RANGE)"),
    ("op_state::verify_has_no_length_query_and_ends_with_its_single_part_call", "its HMAC key is shorter than SoftHSMv2 takes (CKR_KEY_SIZE_RANGE)"),
    ("rsa_oaep_and_pkcs1_encryption_round_trip", "SoftHSMv2 2.6 does RSA-OAEP with SHA-1 only (CKR_ARGUMENTS_BAD)"),
    ("session_rules", "SoftHSMv2 has no named users, so C_LoginUser is CKR_FUNCTION_NOT_SUPPORTED through a vendor module"),
    ("templates::token_only_attributes_are_read_only_in_every_application_template", "its derive mechanism is not one SoftHSMv2 offers (CKR_MECHANISM_INVALID before the template is looked at)"),
    ("five_wrong_pins_lock_the_user_until_the_so_resets_it", "SoftHSMv2 never locks a PIN"),
    ("token_flags_tell_the_truth_through_initialisation", "a SoftHSMv2 token exists only once initialised, so the cluster's token is never uninitialised"),
];

#[test]
fn the_conformance_suite_over_three_softhsm2_tokens_differs_only_where_listed() {
    hsmpool_tests::require_tool("softhsm2-util");
    hsmpool_tests::conformance::judge("softhsm", "three SoftHSMv2 tokens", DIFFERENCES);
}
