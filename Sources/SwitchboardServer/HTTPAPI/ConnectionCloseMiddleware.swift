import Hummingbird

/// Answers a request that asked to close the connection (`Connection: close`) with
/// `Connection: close` too (RFC 9112 §9.6: the server SHOULD), error answers included, as the
/// publish fast path does. Hummingbird closes such a connection after the answer but does not
/// say so, and clients that reuse connections (load generators among them) then try to send on
/// a connection that is going away.
struct ConnectionCloseMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let connection = request.headers[.connection], connection.lowercased().contains("close") else {
            return try await next(request, context)
        }
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as any HTTPResponseError {
            response = try error.response(from: request, context: context)
        }
        response.headers[.connection] = "close"
        return response
    }
}
