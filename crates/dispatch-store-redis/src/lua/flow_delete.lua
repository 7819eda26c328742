-- Remove a queue's config (`FlowStore::delete_queue_config`); its gates stay. ARGV[2] = the
-- queue. Answers 1 when there was one, else 0.
return redis.call('HDEL', K_FLOW_CONFIG, ARGV[2])
