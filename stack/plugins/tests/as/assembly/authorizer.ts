// Answers 403 locally when the request has no `authorization` header.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context,
  send_local_response, GrpcStatusValues, HeaderPair, Headers,
} from "@solo-io/proxy-runtime";

class AuthorizerRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Authorizer(context_id, this);
  }
}

class Authorizer extends Context {
  constructor(context_id: u32, root_context: AuthorizerRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    if (stream_context.headers.request.get("authorization") != "") {
      return FilterHeadersStatusValues.Continue;
    }
    let extra: Headers = [];
    extra.push(new HeaderPair(String.UTF8.encode("content-type"), String.UTF8.encode("text/plain")));
    send_local_response(403, "missing authorization", String.UTF8.encode("forbidden\n"), extra,
      GrpcStatusValues.InvalidCode);
    return FilterHeadersStatusValues.StopIteration;
  }
}

registerRootContext((context_id: u32) => { return new AuthorizerRoot(context_id); }, "authorizer");
