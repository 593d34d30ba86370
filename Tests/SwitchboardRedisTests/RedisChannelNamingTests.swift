import Redis
import SwitchboardCore
import SwitchboardRedis
import SwitchboardWire
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@Suite struct RedisChannelNamingTests {
    static let naming = RedisChannelNaming()

    /// Whether Redis would deliver a message on `channel` to a `PSUBSCRIBE glob` (Redis globs
    /// are fnmatch patterns without flags: `*` spans separators, `\` escapes).
    static func redisGlobMatches(_ glob: String, _ channel: String) -> Bool {
        fnmatch(glob, channel, 0) == 0
    }

    /// One canary channel on every primary owning slots, each in a slot it owns; `{canary}`
    /// stays the channel of the shard that owns it; a primary with a single slot gets one too,
    /// and a primary without slots none.
    @Test func canaryChannelsCoverEveryShard() {
        func node(_ port: Int) -> RedisServerAddress { RedisServerAddress(host: "127.0.0.1", port: port) }
        let canarySlot = HashSlot(key: "switchboard:{canary}").rawValue
        let lonely = canarySlot == 100 ? 101 : 100
        let topology = RedisClusterTopology(shards: [
            RedisClusterShard(primary: node(1), slots: [0...(lonely - 1), (lonely + 1)...8000]),
            RedisClusterShard(primary: node(2), slots: [8001...16383]),
            RedisClusterShard(primary: node(3), slots: [lonely...lonely]),
            RedisClusterShard(primary: node(4), slots: []),
        ])
        let channels = Self.naming.canaryChannels(for: topology)
        let owners = channels.compactMap { topology.primary(for: HashSlot(key: $0)) }
        #expect(channels.count == 3)
        #expect(Set(owners) == [node(1), node(2), node(3)])
        #expect(channels.contains("switchboard:{canary}"))
        #expect(channels.allSatisfy { $0.hasPrefix("switchboard:{canary") && $0.hasSuffix("}") })
        #expect(Self.naming.canaryChannels(for: RedisClusterTopology(shards: [])) == [])
    }

    @Test func destinationChannelsUseTheDefaultPrefix() {
        #expect(Self.naming.prefix == "switchboard:")
        #expect(Self.naming.channel(forDestination: "/topic/greetings") == "switchboard:dest:/topic/greetings")
        #expect(Self.naming.channel(forDestination: "/~user/alice/queue/x") == "switchboard:dest:/~user/alice/queue/x")
    }

    @Test func destinationIsReadBackFromItsChannel() {
        for destination in ["/topic/greetings", "/topic/a.b.c", "/queue/dest:with:colons", ""] {
            #expect(Self.naming.destination(fromChannel: Self.naming.channel(forDestination: destination)) == destination)
        }
        #expect(Self.naming.destination(fromChannel: "switchboard:instance:abc") == nil)
        #expect(Self.naming.destination(fromChannel: "other:dest:/topic/a") == nil)
        #expect(Self.naming.destination(fromChannel: "switchboard:dest") == nil)
    }

    @Test func instanceChannels() {
        #expect(Self.naming.instanceChannel("k3f9xq") == "switchboard:instance:k3f9xq")
        #expect(RedisChannelNaming(prefix: "sb2:").instanceChannel("k3f9xq") == "sb2:instance:k3f9xq")
    }

    @Test func customPrefixSeparatesDeployments() {
        let staging = RedisChannelNaming(prefix: "staging.sb:")
        let channel = staging.channel(forDestination: "/topic/a")
        #expect(channel == "staging.sb:dest:/topic/a")
        #expect(staging.destination(fromChannel: channel) == "/topic/a")
        #expect(Self.naming.destination(fromChannel: channel) == nil)
        #expect(staging.destination(fromChannel: Self.naming.channel(forDestination: "/topic/a")) == nil)
    }

    @Test(arguments: [
        ("/topic/*", "switchboard:dest:/topic/*"),
        ("/topic/**", "switchboard:dest:/topic/*"),
        ("/topic/stocks.*.nyse", "switchboard:dest:/topic/stocks.*.nyse"),
        ("/topic/*.*", "switchboard:dest:/topic/*.*"),
        ("/topic/a?b.[x].*", #"switchboard:dest:/topic/a\?b.\[x\].*"#),
        (#"/topic/back\slash.*"#, #"switchboard:dest:/topic/back\\slash.*"#),
        ("/topic/exact", "switchboard:dest:/topic/exact"),
        // A combining mark after a glob character or a separator: escaped and split by bytes.
        ("/topic/g[\u{301}.*", "switchboard:dest:/topic/g\\[\u{301}.*"),
        ("/topic/g\\\u{301}.*", "switchboard:dest:/topic/g\\\\\u{301}.*"),
        ("/topic/g/*.\u{301}x", "switchboard:dest:/topic/g/*.\u{301}x"),
    ])
    func globReplacesWildcardSegmentsAndEscapesTheRest(pattern: String, glob: String) throws {
        #expect(Self.naming.glob(for: try DestinationPattern(pattern)) == glob)
    }

    @Test func globEscapesGlobCharactersOfThePrefix() throws {
        let naming = RedisChannelNaming(prefix: "sb[1]*?:")
        #expect(naming.glob(for: try DestinationPattern("/topic/*")) == #"sb\[1\]\*\?:dest:/topic/*"#)
        #expect(Self.redisGlobMatches(naming.glob(for: try DestinationPattern("/topic/*")), naming.channel(forDestination: "/topic/a")))
        #expect(!Self.redisGlobMatches(naming.glob(for: try DestinationPattern("/topic/*")), "sb1x:dest:/topic/a"))
    }

    static let destinations = [
        "/topic/a", "/topic/b", "/topic/a.b", "/topic/a.b.c", "/topic/stocks.ibm.nyse", "/topic/stocks.ibm.lse",
        "/topic/a?b.[x].y", "/queue/a", "/topic", "/topicx/a", "/topic/a/b",
        "/topic/g[\u{301}.x", "/topic/g\\\u{301}.x", "/topic/g/k.\u{301}x",
    ]

    @Test(arguments: [
        "/topic/*", "/topic/**", "/topic/a.*", "/topic/a.**", "/topic/stocks.*.nyse", "/topic/a?b.[x].*", "/*/a", "/topic/*/b",
        "/topic/g[\u{301}.*", "/topic/g\\\u{301}.*", "/topic/g/*.\u{301}x",
    ])
    func globCoversEveryDestinationThePatternMatches(text: String) throws {
        let pattern = try DestinationPattern(text)
        let glob = Self.naming.glob(for: pattern)
        var matched = 0
        for destination in Self.destinations where pattern.matches(destination) {
            matched += 1
            #expect(Self.redisGlobMatches(glob, Self.naming.channel(forDestination: destination)), "\(glob) misses \(destination)")
        }
        #expect(matched > 0, "the pattern matches some destination of the list")
        // The glob stays inside the prefix's destination channels and the pattern's literal parts.
        #expect(!Self.redisGlobMatches(glob, Self.naming.instanceChannel("x")))
        #expect(!Self.redisGlobMatches(glob, "other:dest:/topic/a"))
    }

    @Test func globDoesNotWidenPastLiteralSegments() throws {
        let glob = Self.naming.glob(for: try DestinationPattern("/topic/stocks.*.nyse"))
        #expect(!Self.redisGlobMatches(glob, Self.naming.channel(forDestination: "/topic/stocks.ibm.lse")))
        #expect(!Self.redisGlobMatches(glob, Self.naming.channel(forDestination: "/topic/bonds.x.nyse")))
        // Redis' `*` spans separators, so the glob may match more than the pattern; the hub filters.
        #expect(Self.redisGlobMatches(glob, Self.naming.channel(forDestination: "/topic/stocks.a.b.nyse")))
        #expect(!(try DestinationPattern("/topic/stocks.*.nyse")).matches("/topic/stocks.a.b.nyse"))
    }
}
