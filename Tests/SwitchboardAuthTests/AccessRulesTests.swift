import SwitchboardAuth
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Testing

@Suite struct AccessRulesTests {
    static let alice = SessionIdentity(user: "alice", claims: ["roles": ["user", "admin"], "tenant": ["acme"]])
    static let bob = SessionIdentity(user: "bob", claims: ["roles": ["user"]])

    @Test func ruleParsesPatternAndRequiredClaim() throws {
        let plain = try AccessRules.Rule("/topic/**")
        #expect(plain.pattern == "/topic/**")
        #expect(plain.requiredClaim == nil)

        let conditional = try AccessRules.Rule("  /topic/admin.**  if roles = admin, ops ")
        #expect(conditional.pattern == "/topic/admin.**")
        #expect(conditional.requiredClaim?.name == "roles")
        #expect(conditional.requiredClaim?.values == ["admin", "ops"])
        #expect(conditional == (try AccessRules.Rule("/topic/admin.** if roles=admin,ops")))
        #expect(conditional != (try AccessRules.Rule("/topic/admin.** if roles=admin")))
    }

    @Test(arguments: [
        ("topic/a", "a rule must start with '/'"),
        ("", "a rule must start with '/'"),
        ("/topic/a if roles", "expected 'if claim=value'"),
        ("/topic/a if =admin", "expected 'if claim=value'"),
        ("/topic/a if roles=", "expected 'if claim=value'"),
    ])
    func invalidRulesAreRefusedWithAReason(text: String, reason: String) {
        let error = #expect(throws: AccessRules.RuleError.self) {
            _ = try AccessRules(subscribe: [], send: ["/topic/ok", text])
        }
        #expect(error?.rule == text)
        #expect(error?.reason == reason)
        #expect(error?.description == "invalid access rule '\(text)': \(reason)")
    }

    @Test func emptyListsAllowEverything() throws {
        let rules = try AccessRules(subscribe: [], send: [])
        #expect(rules.maySubscribe("/topic/anything", identity: nil))
        #expect(rules.maySubscribe("/topic/**", identity: nil))
        #expect(rules.maySend("/app/x", identity: Self.bob))
    }

    @Test func whatNoRuleAllowsIsDenied() throws {
        let rules = try AccessRules(subscribe: ["/topic/public.*"], send: ["/app/chat"])
        #expect(rules.maySubscribe("/topic/public.news", identity: nil))
        #expect(!rules.maySubscribe("/topic/private.news", identity: nil))
        #expect(!rules.maySubscribe("/topic/public.news.extra", identity: nil))
        #expect(rules.maySend("/app/chat", identity: nil))
        #expect(!rules.maySend("/app/chat2", identity: nil))
        // The lists are separate: a subscribe rule allows no SEND.
        #expect(!rules.maySend("/topic/public.news", identity: nil))
        #expect(!rules.maySubscribe("/app/chat", identity: nil))
    }

    @Test func requiredClaimMustHoldOneOfTheValues() throws {
        let rules = try AccessRules(subscribe: ["/topic/admin.** if roles=admin,ops", "/topic/news"], send: [])
        #expect(rules.maySubscribe("/topic/admin.audit", identity: Self.alice))
        #expect(!rules.maySubscribe("/topic/admin.audit", identity: Self.bob))
        #expect(!rules.maySubscribe("/topic/admin.audit", identity: nil))
        #expect(!rules.maySubscribe("/topic/admin.audit", identity: SessionIdentity(user: "carol")))
        #expect(rules.maySubscribe("/topic/news", identity: Self.bob))
    }

    @Test func subAndUserPlaceholdersAreTheSessionUser() throws {
        let rules = try AccessRules(subscribe: ["/user/{sub}/**"], send: ["/app/{user}.inbox"])
        #expect(rules.maySubscribe("/user/alice/queue.x", identity: Self.alice))
        #expect(!rules.maySubscribe("/user/bob/queue.x", identity: Self.alice))
        #expect(rules.maySend("/app/bob.inbox", identity: Self.bob))
        #expect(!rules.maySend("/app/alice.inbox", identity: Self.bob))
        // Anonymous: the placeholder has no value, so the rule matches nothing.
        #expect(!rules.maySubscribe("/user//queue.x", identity: nil))
        #expect(!rules.maySubscribe("/user/{sub}/queue.x", identity: nil))
    }

    /// A claim with several values stands for each (before, only the first was used: a user
    /// in teams red and blue could reach red's topics only).
    @Test func aClaimPlaceholderStandsForEachOfItsValues() throws {
        let rules = try AccessRules(subscribe: ["/topic/{tenant}.*", "/topic/role.{roles}", "/topic/{tenant}.{roles}.**"], send: [])
        #expect(rules.maySubscribe("/topic/acme.orders", identity: Self.alice))
        #expect(!rules.maySubscribe("/topic/other.orders", identity: Self.alice))
        #expect(!rules.maySubscribe("/topic/acme.orders", identity: Self.bob), "bob has no tenant claim")
        #expect(rules.maySubscribe("/topic/role.user", identity: Self.alice))
        #expect(rules.maySubscribe("/topic/role.admin", identity: Self.alice))
        #expect(!rules.maySubscribe("/topic/role.ops", identity: Self.alice))
        #expect(rules.maySubscribe("/topic/acme.admin.x.y", identity: Self.alice))
        #expect(rules.maySubscribe("/topic/acme.admin.**", identity: Self.alice), "a wildcard covered by one expansion")
        #expect(!rules.maySubscribe("/topic/acme.*.x", identity: Self.alice), "covered by no single expansion")
        #expect(!rules.maySubscribe("/topic/role.admin", identity: Self.bob))
    }

    /// Unsafe values of a claim are skipped, the safe ones still count; past 64 combinations
    /// the rest is not tried.
    @Test func unsafeValuesAreSkippedAndExpansionsAreBounded() throws {
        let rules = try AccessRules(subscribe: ["/topic/team.{teams}"], send: [])
        let mixed = SessionIdentity(user: "u", claims: ["teams": ["a.b", "*", "", "red"]])
        #expect(rules.maySubscribe("/topic/team.red", identity: mixed))
        #expect(!rules.maySubscribe("/topic/team.a.b", identity: mixed))
        #expect(!rules.maySubscribe("/topic/team.*", identity: mixed))
        let many = SessionIdentity(user: "u", claims: ["teams": (0..<100).map { "t\($0)" }])
        #expect(rules.maySubscribe("/topic/team.t63", identity: many))
        #expect(!rules.maySubscribe("/topic/team.t64", identity: many))
        #expect(AccessRules.expansions("/x/{teams}.{teams}", many).count == AccessRules.maxExpansions)
        #expect(AccessRules.expansions("/x/{teams}", SessionIdentity(user: "u", claims: ["teams": ["a/b"]])).isEmpty)
    }

    @Test(arguments: ["a.b", "a/b", "*", "**", "x*"])
    func placeholderValuesCannotWidenARule(user: String) throws {
        let rules = try AccessRules(subscribe: ["/user/{sub}/inbox"], send: [])
        let identity = SessionIdentity(user: user)
        #expect(!rules.maySubscribe("/user/\(user)/inbox", identity: identity))
        #expect(!rules.maySubscribe("/user/a/inbox", identity: identity))
        #expect(!rules.maySubscribe("/user/*/inbox", identity: identity))
    }

    /// A pattern that cannot be parsed is refused when the rules are loaded. Before, it was
    /// accepted and matched nothing at every check: every SUBSCRIBE it was meant to allow got
    /// "permission denied", with nothing at start-up to say why.
    @Test(arguments: ["/user/{sub/inbox", "/topic/a*", "/topic/**.x", "/topic/a.** if", "/topic/{sub"])
    func unparsablePatternsAreRefusedAtLoad(text: String) {
        let error = #expect(throws: AccessRules.RuleError.self) {
            _ = try AccessRules(subscribe: ["/topic/ok", text], send: [])
        }
        #expect(error?.rule == text)
        #expect(error?.description.hasPrefix("invalid access rule '\(text)': ") == true)
    }

    @Test func placeholdersStillLoadAndMatchTheSessionsValues() throws {
        let rules = try AccessRules(subscribe: ["/user/{sub}/inbox", "/topic/team.{team}.**"], send: [])
        #expect(rules.maySubscribe("/user/alice/inbox", identity: Self.alice))
        #expect(!rules.maySubscribe("/user/bob/inbox", identity: Self.alice))
    }

    @Test func wildcardSubscriptionNeedsARuleCoveringAllItMatches() throws {
        let rules = try AccessRules(subscribe: ["/topic/public.**", "/topic/room.*"], send: [])
        #expect(rules.maySubscribe("/topic/public.**", identity: nil))
        #expect(rules.maySubscribe("/topic/public.a.*", identity: nil))
        #expect(rules.maySubscribe("/topic/room.*", identity: nil))
        #expect(!rules.maySubscribe("/topic/room.**", identity: nil), "'*' covers one segment, not the rest")
        #expect(!rules.maySubscribe("/topic/**", identity: nil))
        #expect(!rules.maySubscribe("/topic/*", identity: nil))
        // A `*` matches no empty segment, so it covers none: `/topic/.**` receives `/topic/.x`,
        // which `/topic/*.**` does not allow.
        let starRest = try AccessRules(subscribe: ["/topic/*.**"], send: [])
        #expect(!starRest.maySubscribe("/topic/.x", identity: nil))
        #expect(!starRest.maySubscribe("/topic/.**", identity: nil))
        #expect(starRest.maySubscribe("/topic/a.**", identity: nil))
        // A malformed wildcard subscription is allowed by no rule.
        #expect(!rules.maySubscribe("/topic/public.a*", identity: nil))
    }

    @Test func anyRuleOfSeveralMayAllow() throws {
        let rules = try AccessRules(
            subscribe: [], send: ["/app/admin.** if roles=admin", "/app/{sub}.**", "/app/shared.* if tenant=acme"])
        #expect(rules.maySend("/app/admin.reset", identity: Self.alice))
        #expect(!rules.maySend("/app/admin.reset", identity: Self.bob))
        #expect(rules.maySend("/app/bob.profile", identity: Self.bob))
        #expect(rules.maySend("/app/shared.board", identity: Self.alice))
        #expect(!rules.maySend("/app/shared.board", identity: Self.bob))
    }

    // MARK: presence

    @Test func noPresenceRulesAllowNoPresenceWhateverTheOtherLists() throws {
        let open = try AccessRules(subscribe: [], send: [])
        #expect(open.presence.isEmpty)
        #expect(!open.mayWatchPresence("/topic/room", identity: Self.alice))
        let strict = try AccessRules(subscribe: ["/topic/**"], send: ["/app/**"])
        #expect(!strict.mayWatchPresence("/topic/room", identity: nil))
    }

    @Test func presenceRulesTakeTheSamePatternsPlaceholdersAndConditions() throws {
        let rules = try AccessRules(
            subscribe: [], send: [],
            presence: ["/topic/lobby.*", "/topic/team.{tenant}.**", "/topic/ops.** if roles=admin", "/topic/inbox.{sub}"])
        #expect(rules.presence.count == 4)
        #expect(rules.presence[2].requiredClaim?.name == "roles")
        #expect(rules.mayWatchPresence("/topic/lobby.main", identity: nil))
        #expect(!rules.mayWatchPresence("/topic/lobby.main.extra", identity: nil))
        #expect(rules.mayWatchPresence("/topic/team.acme.chat", identity: Self.alice))
        #expect(!rules.mayWatchPresence("/topic/team.acme.chat", identity: Self.bob), "bob has no tenant claim")
        #expect(!rules.mayWatchPresence("/topic/team.other.chat", identity: Self.alice))
        #expect(rules.mayWatchPresence("/topic/ops.alerts", identity: Self.alice))
        #expect(!rules.mayWatchPresence("/topic/ops.alerts", identity: Self.bob))
        #expect(rules.mayWatchPresence("/topic/inbox.bob", identity: Self.bob))
        #expect(!rules.mayWatchPresence("/topic/inbox.bob", identity: Self.alice))
        #expect(!rules.mayWatchPresence("/topic/inbox.bob", identity: nil), "an anonymous session has no {sub}")
        // The presence list allows no SUBSCRIBE or SEND, and they allow no presence.
        let separate = try AccessRules(subscribe: ["/topic/a"], send: ["/topic/a"], presence: ["/topic/b"])
        #expect(!separate.maySubscribe("/topic/b", identity: nil))
        #expect(!separate.mayWatchPresence("/topic/a", identity: nil))
    }

    @Test func anInvalidPresenceRuleIsRefused() {
        let error = #expect(throws: AccessRules.RuleError.self) {
            _ = try AccessRules(subscribe: [], send: [], presence: ["/topic/ok", "topic/no-slash"])
        }
        #expect(error?.description == "invalid access rule 'topic/no-slash': a rule must start with '/'")
    }

    @Test func theSessionPolicyAsksTheRulesAboutPresence() throws {
        var config = SessionConfiguration()
        config.accessPolicy = try AccessRules(subscribe: [], send: [], presence: ["/topic/lobby.*"])
        let policy = SessionPolicy(configuration: config, routes: RouteTable())
        #expect(policy.mayWatchPresence("/topic/lobby.a", identity: nil))
        #expect(!policy.mayWatchPresence("/topic/other", identity: nil))
        #expect(policy.maySubscribe("/topic/other", identity: nil), "no subscribe rules: subscribing stays open")
    }
}
