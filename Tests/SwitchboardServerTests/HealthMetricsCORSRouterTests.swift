import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import SwitchboardCore
import SwitchboardWire
import Testing

@testable import SwitchboardServer

/// Health and metrics routes through the Hummingbird router.
@Suite struct HealthAndMetricsRouterTests {
    @Test func healthReportsTheEngineAndTheGauges() async throws {
        let h = APIRouterHarness()
        h.services.stats.connectionsOpen.add(3)
        h.services.stats.sessionsConnected.add(2)
        h.services.stats.subscriptions.add(5)
        _ = try await h.subscribe("/topic/a.*")
        try await h.test { client in
            let response = try await client.execute(uri: "/health", method: .get)
            #expect(response.status == .ok)
            #expect(response.headers[.contentType] == "application/json")
            #expect(
                response.text
                    == #"{"connections":3,"destinations":1,"engine":"memory","instance":"t1","redis":null,"sessions":2,"status":"ok","subscriptions":5}"#)
        }
    }

    @Test func livenessIsAlwaysLive() async throws {
        let h = APIRouterHarness()
        h.admission.stopAdmitting()
        try await h.test { client in
            let response = try await client.execute(uri: "/health/live", method: .get)
            #expect(response.status == .ok)
            #expect(response.text == #"{"status":"live"}"#)
        }
    }

    @Test func readinessEndsWhenDraining() async throws {
        let h = APIRouterHarness()
        try await h.test { client in
            let ready = try await client.execute(uri: "/health/ready", method: .get)
            #expect(ready.status == .ok)
            #expect(ready.text == #"{"status":"ready"}"#)

            h.admission.stopAdmitting()
            let draining = try await client.execute(uri: "/health/ready", method: .get)
            #expect(draining.status == .serviceUnavailable)
            #expect(draining.headers[.contentType] == "application/json")
            #expect(draining.text == #"{"reasons":["draining"],"status":"not ready"}"#)
        }
    }

    /// Load balancers may check health with `HEAD`: the same status as `GET` (before, 404).
    @Test func healthRoutesAnswerHead() async throws {
        let h = APIRouterHarness()
        try await h.test { client in
            for uri in ["/health", "/health/live", "/health/ready"] {
                let response = try await client.execute(uri: uri, method: .head)
                #expect(response.status == .ok, "\(uri)")
                #expect(response.headers[.contentType] == "application/json", "\(uri)")
            }
            h.admission.stopAdmitting()
            #expect(try await client.execute(uri: "/health/ready", method: .head).status == .serviceUnavailable)
        }
    }

    @Test func metricsArePrometheusTextOfTheGatewaysCounters() async throws {
        let h = APIRouterHarness()
        h.services.stats.connectionsOpen.add(4)
        h.services.stats.connectionsTotal.add(10)
        h.services.stats.sessionsByVersion[2].add(3)
        h.services.stats.errors[SessionErrorKind.slowConsumer.index].add(1)
        try await h.test { client in
            let first = try await client.execute(uri: "/metrics", method: .get)
            #expect(first.status == .ok)
            #expect(first.headers[.contentType] == "text/plain; version=0.0.4; charset=utf-8")
            // Gauges are written as floating-point numbers, counters as integers.
            let expected = [
                "# TYPE switchboard_connections gauge",
                "switchboard_connections 4.0",
                "# TYPE switchboard_connections_total counter",
                "switchboard_connections_total 10",
                #"switchboard_sessions{version="1.2"} 3.0"#,
                #"switchboard_sessions{version="1.0"} 0.0"#,
                #"switchboard_session_errors_total{kind="slow_consumer"} 1"#,
                #"switchboard_frames_in_total{command="SEND"} 0"#,
                #"switchboard_frames_out_total{command="MESSAGE"} 0"#,
                "switchboard_destinations_active 0.0",
            ]
            let lines = Set(first.text.split(separator: "\n").map(String.init))
            #expect(expected.filter { !lines.contains($0) } == [])
            #expect(!first.text.contains("switchboard_redis_"), "no Redis metrics with the in-memory engine")

            // Counters move by what happened since the last scrape; gauges are set.
            h.services.stats.connectionsTotal.add(5)
            h.services.stats.connectionsOpen.subtract(4)
            let second = Set(try await client.execute(uri: "/metrics", method: .get).text.split(separator: "\n").map(String.init))
            #expect(second.contains("switchboard_connections_total 15"))
            #expect(second.contains("switchboard_connections 0.0"))
        }
    }
}

/// ``CORSAllowlistMiddleware`` in front of the API routes.
@Suite struct CORSAllowlistRouterTests {
    static let publish = #"{"topic":"/topic/news","message":"hi"}"#

    @Test func allowedOriginIsEchoedAndThePublishHappens() async throws {
        let h = APIRouterHarness(allowedOrigins: ["https://app.example", "https://admin.example"])
        let subscriber = try await h.subscribe("/topic/news")
        try await h.test { client in
            let response = try await client.post("/api/notification", Self.publish, headers: [.origin: "https://admin.example"])
            #expect(response.status == .ok)
            #expect(response.headers[.accessControlAllowOrigin] == "https://admin.example")
            #expect(response.headers[.vary] == "Origin")
        }
        #expect(try await subscriber.received().map { String(buffer: $0.body) } == ["hi"])
    }

    @Test func refusedOriginGets403AndNothingIsPublished() async throws {
        let h = APIRouterHarness(allowedOrigins: ["https://app.example"])
        let subscriber = try await h.subscribe("/topic/news")
        try await h.test { client in
            for origin in ["https://evil.example", "https://app.example.evil.example", "http://app.example", "null"] {
                let response = try await client.post("/api/notification", Self.publish, headers: [.origin: origin])
                #expect(response.status == .forbidden)
                #expect(response.headers[.accessControlAllowOrigin] == nil)
                #expect(response.text == #"{"error":"origin \#(origin) is not allowed","field":"Origin"}"#)
            }
            // Every route is behind the allowlist, health included.
            let health = try await client.execute(uri: "/health", method: .get, headers: [.origin: "https://evil.example"])
            #expect(health.status == .forbidden)
        }
        #expect(try await subscriber.received().isEmpty)
    }

    @Test func requestsWithoutOriginPassWithoutCORSHeaders() async throws {
        let h = APIRouterHarness(allowedOrigins: ["https://app.example"])
        try await h.test { client in
            let response = try await client.post("/api/notification", Self.publish)
            #expect(response.status == .ok)
            #expect(response.headers[.accessControlAllowOrigin] == nil)
            #expect(response.headers[.vary] == nil)
        }
    }

    @Test func preflightIsAnsweredForAllowedOriginsOnly() async throws {
        let h = APIRouterHarness(allowedOrigins: ["https://app.example"])
        let subscriber = try await h.subscribe("/topic/news")
        try await h.test { client in
            let asked = try await client.execute(
                uri: "/api/notification", method: .options,
                headers: [.origin: "https://app.example", .accessControlRequestMethod: "POST", .accessControlRequestHeaders: "content-type, x-trace"])
            #expect(asked.status == .noContent)
            #expect(asked.headers[.accessControlAllowOrigin] == "https://app.example")
            #expect(asked.headers[.accessControlAllowMethods] == "GET, POST, OPTIONS")
            #expect(asked.headers[.accessControlAllowHeaders] == "content-type, x-trace")
            #expect(asked.headers[.accessControlMaxAge] == "600")
            #expect(asked.headers[.vary] == "Origin")

            let defaults = try await client.execute(uri: "/api/notification", method: .options, headers: [.origin: "https://app.example"])
            #expect(defaults.status == .noContent)
            #expect(defaults.headers[.accessControlAllowHeaders] == "Content-Type, Authorization")

            let refused = try await client.execute(uri: "/api/notification", method: .options, headers: [.origin: "https://evil.example"])
            #expect(refused.status == .forbidden)
            #expect(refused.headers[.accessControlAllowMethods] == nil)
        }
        #expect(try await subscriber.received().isEmpty)
    }

    @Test(arguments: [[], ["*"], ["https://app.example", "*"]])
    func emptyOrStarAllowlistAllowsAnyOrigin(allowed: [String]) async throws {
        let h = APIRouterHarness(allowedOrigins: allowed)
        try await h.test { client in
            let response = try await client.post("/api/notification", Self.publish, headers: [.origin: "https://anywhere.example"])
            #expect(response.status == .ok)
            #expect(response.headers[.accessControlAllowOrigin] == "https://anywhere.example")
        }
    }

    @Test func errorAnswersToAnAllowedOriginCarryCORSHeaders() async throws {
        let h = APIRouterHarness(allowedOrigins: ["https://app.example"])
        try await h.test { client in
            let response = try await client.post("/api/notification", #"{"topic":"/queue/x","message":"m"}"#, headers: [.origin: "https://app.example"])
            #expect(response.status == .badRequest)
            #expect(response.headers[.accessControlAllowOrigin] == "https://app.example")
            #expect(response.headers[.vary] == "Origin")
            #expect(response.text == #"{"error":"field 'topic' must start with /topic/","field":"topic"}"#)

            let missing = try await client.execute(uri: "/api/nothing-here", method: .get, headers: [.origin: "https://app.example"])
            #expect(missing.status == .notFound)
            #expect(missing.headers[.accessControlAllowOrigin] == "https://app.example")
        }
    }
}
