// Counts requests in a counter metric.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, Counter,
} from "@solo-io/proxy-runtime";

class CounterRoot extends RootContext {
  requests: Counter;

  constructor(context_id: u32) {
    super(context_id);
    this.requests = new Counter("as_requests_total");
  }

  createContext(context_id: u32): Context {
    return new RequestCounter(context_id, this);
  }
}

class RequestCounter extends Context {
  constructor(context_id: u32, root_context: CounterRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    (this.root_context as CounterRoot).requests.increment(1);
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new CounterRoot(context_id); }, "counter");
